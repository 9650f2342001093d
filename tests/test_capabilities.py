"""Members' optional capabilities (sasg.core.capabilities): declared where they register, known
without building them, checked against the member when an algorithm is built, shown by
`sasg list --verbose`; plug-ins that declare none are read off their class (or a built member)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from sasg.cli.main import main
from sasg.config import ConfigError, RunConfig
from sasg.core import AlgorithmSpec, Layout, register
from sasg.core.capabilities import CAPABILITIES, METHOD, check_member, for_kind
from sasg.core.declared import capabilities_of, default_memory
from sasg.core.natural import natural_codec
from sasg.core.registry import REGISTRIES
from sasg.core.spec import AlgorithmSettings
from sasg.ddp import hook_triggers
from sasg.ddp.rules import hook_algorithm

LAYOUT = Layout([("w", (3, 4)), ("b", (4,))])


@pytest.fixture(autouse=True)
def own_registrations():
    """The members these tests register (some broken on purpose) are gone after each test."""
    saved = {kind: dict(registry._entries) for kind, registry in REGISTRIES.items()}
    yield
    for kind, registry in REGISTRIES.items():
        registry._entries.clear()
        registry._entries.update(saved[kind])


class _Rule:
    """A trigger with only its protocol: uploads every round."""

    lazy = True
    history = 0
    worker_buffers = ()

    def __init__(self, layout=None, settings=None):
        pass

    def decide(self, rnd):
        return torch.ones(rnd.workers.staleness.shape[0], dtype=torch.bool)

    def uploaded(self, workers, rows, theta):
        pass

    def describe(self):
        return {"trigger": self.name}


def _built_in(entry) -> bool:
    """A member of sasg's own, not one a plug-in (or another test, in this process) registered."""
    return getattr(entry.factory, "__module__", "").startswith("sasg.")


def test_every_built_in_member_keeps_its_declaration():
    for kind in ("trigger", "compressor", "memory"):
        for entry in filter(_built_in, REGISTRIES[kind].entries()):
            assert entry.capabilities is not None, f"{kind} {entry.name} declares no capabilities"
            declared = capabilities_of(entry)
            member = entry.factory(LAYOUT, AlgorithmSettings())
            assert check_member(entry, member) == declared
            for cap in for_kind(kind):  # each method as its protocol says
                if cap.sort == METHOD and declared[cap.name]:
                    assert isinstance(member, cap.protocol), (entry.name, cap.name)
            assert set(declared) == {c.name for c in for_kind(kind)}
    assert len(CAPABILITIES) >= 14


def test_a_declared_but_missing_method_is_refused_with_the_fix():
    name = "cap-missing"
    register("trigger", name, "declares checked_rows, has none",
             lambda layout, s: type("NoRows", (_Rule,), {"name": name})(),
             capabilities={"lazy": True, "needs_stale_grads": True, "checked_rows": True})
    with pytest.raises(ValueError, match=r"the trigger 'cap-missing' declares the capability 'checked_rows' but its "
                                         r"member \(NoRows\) has no checked_rows: define checked_rows on the member "
                                         r"\(see sasg.core.capabilities.ChecksRows\), or drop 'checked_rows'"):
        AlgorithmSpec.parse(f"{name}+topk").build(LAYOUT)
    with pytest.raises(ConfigError, match="declares the capability 'checked_rows'"):  # refused before any run
        RunConfig(algorithms=(f"{name}+topk",)).validate()


def test_an_undeclared_method_and_a_contradicted_flag_are_refused():
    class Store:
        name = "cap-store"
        corrects = True
        worker_buffers = ()

        def upload(self, *a):
            raise AssertionError

        def server_store(self, compressor, n, device=None, dtype=None):
            raise AssertionError

        def describe(self):
            return {}

    register("memory", "cap-store", "has server_store, declares nothing of it", lambda layout, s: Store(),
             capabilities={})
    with pytest.raises(ValueError, match="the memory 'cap-store' has server_store .* but does not declare it: add "
                                         "'server_store': True"):
        AlgorithmSpec.parse("always+topk+cap-store").build(LAYOUT)
    register("trigger", "cap-liar", "says it is not lazy",
             lambda layout, s: type("Liar", (_Rule,), {"name": "cap-liar"})(), capabilities={"lazy": False})
    with pytest.raises(ValueError, match=r"declares lazy=False but its member \(Liar\) says lazy=True"):
        AlgorithmSpec.parse("cap-liar+topk").build(LAYOUT)


def test_a_registration_names_only_known_capabilities():
    with pytest.raises(ValueError, match="unknown capability 'lazzy'; a trigger may declare lazy, "):
        register("trigger", "cap-typo", "a typo", _Rule, capabilities={"lazzy": True})
    with pytest.raises(ValueError, match="unknown capability 'server_store'; a compressor may declare"):
        register("compressor", "cap-kind", "a memory's capability", _Rule, capabilities={"server_store": True})
    with pytest.raises(ValueError, match="declare the method capability 'checked_rows' as True"):
        register("trigger", "cap-method", "not a bool", _Rule, capabilities={"checked_rows": "yes"})
    assert "cap-typo" not in REGISTRIES["trigger"]


def test_sasg_list_verbose_shows_each_members_capabilities(capsys):
    assert main(["list", "--verbose"]) == 0
    out = capsys.readouterr().out

    def caps(kind, name):
        m = re.search(rf"^{kind}\s+{re.escape(name)}\s.*\n\s+capabilities: (.*)$", out, re.M)
        assert m, f"{kind} {name} has no capabilities line"
        return m.group(1)

    assert caps("trigger", "wk2") == "lazy, needs_stale_grads, window, checked_rows"
    assert caps("trigger", "wk1") == "lazy, needs_stale_grads=False, window"
    assert caps("trigger", "always") == "lazy=False"
    assert "default_memory=ef21" in caps("trigger", "clag") and "check_algorithm" in caps("trigger", "clag")
    assert caps("compressor", "topk") == "default_memory=ef, honours_tensor_policy, k_per_segment"
    assert "server_buffers, begin_round" in caps("compressor", "powersgd")
    assert "default_codec=elias" in caps("compressor", "qsgd")
    assert caps("memory", "ef21") == "server_store, receive"
    assert caps("memory", "ef") == "-"
    assert not re.search(r"^codec\s+paper32.*\n\s+capabilities", out, re.M)  # codecs have none
    assert main(["list"]) == 0
    assert "capabilities:" not in capsys.readouterr().out


def _raising(entry, calls):
    def factory(layout, settings):
        calls.append(entry.name)
        raise RuntimeError(f"{entry.name} was built")

    return dataclasses.replace(entry, factory=factory)


def test_hook_triggers_and_the_defaults_build_no_member(monkeypatch):
    """Every factory raises and counts: the answers come from the declarations alone."""
    calls: list[str] = []
    for kind in ("trigger", "compressor", "memory"):
        registry = REGISTRIES[kind]
        monkeypatch.setattr(registry, "_entries",
                            {k: _raising(e, calls) for k, e in registry._entries.items() if _built_in(e)})
    register("trigger", "cap-declared", "a plug-in whose factory raises",
             lambda layout, s: (_ for _ in ()).throw(RuntimeError("built")),
             capabilities={"lazy": True, "needs_stale_grads": False})
    plain = hook_triggers()
    assert plain[:6] == ["always", "wk1", "ps", "wk1-plain", "ps-plain", "clag"]
    assert "cap-declared" in plain and "wk2" not in plain
    assert "wk2" in hook_triggers(second_gradient=True)
    assert natural_codec("always+qsgd") == "elias" and natural_codec("wk2+topk") == "paper32"
    assert default_memory(AlgorithmSpec.parse("clag+topk")) == "ef21"
    assert calls == []


def test_plugins_registered_the_old_way_keep_working():
    # A class that is its own factory: read off the class, never built (its __init__ would raise).
    @register("trigger", "cap-old-class", "attributes only")
    class OldClass(_Rule):
        name = "cap-old-class"
        needs_stale_grads = False

        def __init__(self, layout, settings):
            if layout is None:
                raise RuntimeError("built on nothing")

    assert REGISTRIES["trigger"].get("cap-old-class").capabilities is None
    assert "cap-old-class" in hook_triggers()
    # A lambda that declares nothing: built once on a small layout, as before (lazy: needs it).
    register("trigger", "cap-old-lambda", "attributes only, a lambda",
             lambda layout, s: type("OldLambda", (_Rule,), {"name": "cap-old-lambda"})())
    assert "cap-old-lambda" not in hook_triggers() and "cap-old-lambda" in hook_triggers(second_gradient=True)
    alg = AlgorithmSpec.parse("cap-old-lambda+topk").build(LAYOUT)
    assert alg.needs_stale_grads and alg.lazy
    assert hook_algorithm("cap-old-class+topk").settings.aggregate == "senders"


def test_a_declared_flag_is_what_the_runners_go_by():
    """A trigger that declares needs_stale_grads=False need not repeat it as an attribute."""
    register("trigger", "cap-flagged", "declares, has no attribute",
             lambda layout, s: type("Flagged", (_Rule,), {"name": "cap-flagged"})(),
             capabilities={"lazy": True, "needs_stale_grads": False})
    alg = AlgorithmSpec.parse("cap-flagged+topk").build(LAYOUT)
    assert alg.lazy and not alg.needs_stale_grads
    assert "cap-flagged" in hook_triggers()
