"""Which containers a trace-ping reads before its probe: those it names,
by name, id prefix or address; the rest only if the trace needs them."""

from tracer.ping import trace_ping as ping


def attrs(name, ident, *addresses):
    networks = {f"n{i}": {"IPAddress": a, "GlobalIPv6Address": ""}
                for i, a in enumerate(addresses)}
    return {"Name": f"/{name}", "Id": ident, "NetworkSettings": {"Networks": networks}}


WEB = attrs("web", "abcdef123456", "172.17.0.4")
DB = attrs("db", "fedcba654321", "172.18.0.2")
OTHER = attrs("other", "0123456789ab", "172.17.0.9")


def test_source_and_destination_by_name():
    wanted = ping._involved(ping.Request("web", "db:5432"))
    assert [wanted(c) for c in (WEB, DB, OTHER)] == [True, True, False]


def test_a_destination_address_names_its_container_and_an_id_prefix_its_own():
    wanted = ping._involved(ping.Request("abcd", "172.18.0.2"))
    assert [wanted(c) for c in (WEB, DB, OTHER)] == [True, True, False]


def test_an_outside_destination_and_a_dns_probe_read_only_the_source():
    assert [ping._involved(ping.Request("web", "198.51.100.2"))(c)
            for c in (WEB, DB, OTHER)] == [True, False, False]
    assert [ping._involved(ping.Request("web", None, dns="db"))(c)
            for c in (WEB, DB, OTHER)] == [True, False, False]
