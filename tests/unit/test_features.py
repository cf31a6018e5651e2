"""Choosing a mechanism from probe answers: pure logic, no kernel touched."""

from __future__ import annotations

import pytest

from tracer.kernel import features, loader
from tracer.kernel.kernel_layout import NF_CONTEXT_MACROS, NF_STATE_MACROS, KernelLayout


@pytest.mark.parametrize("value, disabled", [
    ("", set()),
    ("tcx", {"tcx"}),
    (" tcx , fentry", {"tcx", "fentry"}),
    ("netfilter-link,bogus", {"netfilter-link"}),
    ("tc-conntrack", {"tc-conntrack"}),
])
def test_disabled_features_come_from_the_environment(value, disabled):
    environ = {features.DISABLE_VARIABLE: value}
    assert {f for f in features.FEATURES if features.disabled(f, environ)} == disabled


@pytest.mark.parametrize("feature, probe", [("tcx", features.tcx),
                                            ("tc-conntrack", features.tc_conntrack)])
def test_a_disabled_feature_is_not_probed(monkeypatch, feature, probe):
    monkeypatch.setenv(features.DISABLE_VARIABLE, feature)
    answer = probe()
    assert not answer.available and features.DISABLE_VARIABLE in answer.detail


def kernel(*macro_sets: set[str], nf_hook_slow_id: int | None = 7) -> loader.KernelInfo:
    offsets = {m: 0 for macros in macro_sets for m in macros}
    return loader.KernelInfo(KernelLayout(offsets, ()), {}, nf_hook_slow_id)


def answer(available: bool, detail: str = "probed"):
    return lambda *args: features.Probe(available, detail)


@pytest.mark.parametrize("macros, link, fentry, mechanism, why", [
    # 6.4+: netfilter links win.
    ((NF_CONTEXT_MACROS, NF_STATE_MACROS), True, True, loader.NETFILTER_LINK, ""),
    # 6.1: no bpf_nf_ctx in BTF, fentry works.
    ((NF_STATE_MACROS,), True, True, loader.FENTRY, ""),
    # bpf_nf_ctx present but the link refused (CONFIG_NETFILTER_BPF_LINK off).
    ((NF_CONTEXT_MACROS, NF_STATE_MACROS), False, True, loader.FENTRY, ""),
    # Neither: the reason names both.
    ((NF_STATE_MACROS,), False, False, "", "fentry/fexit on nf_hook_slow: no"),
    ((set(),), False, True, "", "no struct nf_hook_state"),
])
def test_nat_mechanism(monkeypatch, macros, link, fentry, mechanism, why):
    monkeypatch.setattr(features, "netfilter_link", answer(link, "no"))
    monkeypatch.setattr(features, "fentry", answer(fentry, "no"))
    choice = loader.choose_nat(kernel(*macros))
    assert choice.mechanism == mechanism
    assert why in choice.why_not
    if mechanism == loader.FENTRY:
        assert "-DNAT_VIA_NF_HOOK_SLOW" in choice.cflags()
        assert any(flag.startswith("-DTRACER_NETNS=") for flag in choice.cflags())
    elif mechanism == loader.NETFILTER_LINK:
        assert choice.cflags() == ["-DNAT_VIA_NETFILTER_LINK"]
    else:
        assert choice.cflags() == []
