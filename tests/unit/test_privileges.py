"""Privileges are judged by effective capabilities, not by uid."""

import pytest

from tracer.errors import PrivilegeError
from tracer.kernel.loader import check_privileges

SYS_ADMIN = 1 << 21
BPF_SET = (1 << 39) | (1 << 38) | (1 << 12)


@pytest.mark.parametrize("cap_eff, allowed", [
    (0, False),                       # root in an empty bounding set
    (SYS_ADMIN, True),
    (BPF_SET, True),
    (BPF_SET & ~(1 << 38), False),    # no CAP_PERFMON
    ((1 << 41) - 1, True),            # everything
])
def test_capabilities_decide(tmp_path, cap_eff, allowed):
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython3\nCapEff:\t{cap_eff:016x}\n")
    if allowed:
        check_privileges(str(status))
    else:
        with pytest.raises(PrivilegeError, match="needs root"):
            check_privileges(str(status))
