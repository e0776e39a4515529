"""Unit tests for mi_crow.hooks on a small hand-built torch model wrapped by LayerRegistry and HookManager."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from mi_crow.hooks import (
    HOOK_KINDS,
    Controller,
    Detector,
    FunctionController,
    Hook,
    HookError,
    HookHandle,
    HookManager,
    HookType,
    LayerActivationDetector,
    ModelInputDetector,
    ModelOutputDetector,
    NeuronMultiplierController,
    StopForward,
)
from mi_crow.hooks.tensors import split_inputs, split_output
from mi_crow.language_model.errors import UnknownLayerError
from mi_crow.language_model.layers import LayerRegistry

pytestmark = pytest.mark.unit

D_IN, D, D_OUT = 4, 8, 3

Pair = namedtuple("Pair", ["hidden", "aux"])


class AttrDict(OrderedDict):
    """Like transformers' ModelOutput: an ordered dict whose keys are also attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class TupleBlock(nn.Module):
    """Returns ``(hidden, aux)`` like a transformer block returning hidden states plus extras."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        return h, h.sum(-1)


class DictBlock(nn.Module):
    """Returns a dict-like output (ModelOutput style) led by the hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> AttrDict:
        h = torch.tanh(self.lin(x))
        return AttrDict(hidden=h, aux=h.mean())


class KwBlock(nn.Module):
    """Takes its input by keyword only, as HF layers take ``hidden_states``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, *, hidden_states: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.lin(hidden_states) * scale


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(D_IN, D)
        self.block = TupleBlock()
        self.mixer = DictBlock()
        self.kw = KwBlock()
        self.head = nn.Linear(D, D_OUT)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids)
        h, _ = self.block(h)
        h = self.mixer(h)["hidden"]
        h = self.kw(hidden_states=h)
        return self.head(h)

    def stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The same computation step by step, with no hooks involved: the reference for every test."""
        out: dict[str, torch.Tensor] = {"embed": self.embed(x)}
        out["block"] = self.block.proj(out["embed"])
        out["mixer"] = torch.tanh(self.mixer.lin(out["block"]))
        out["kw"] = self.kw.lin(out["mixer"])
        out["head"] = self.head(out["kw"])
        return out


class Recorder(Detector):
    """Appends (tag, tensor) to a shared log so tests can see call order and what each hook saw."""

    kind = "recorder"

    def __init__(self, layer: str | None, log: list[tuple[str, torch.Tensor]], tag: str, **kw: Any) -> None:
        super().__init__(layer, **kw)
        self.log, self.tag = log, tag

    def observe(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> None:
        self.log.append((self.tag, tensor.detach().clone()))


@pytest.fixture
def model() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


@pytest.fixture
def manager(model: Toy) -> HookManager:
    return HookManager(LayerRegistry(model))


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 5, D_IN)


def hook_dict_sizes(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


# ---------------------------------------------------------------------- detectors


@pytest.mark.parametrize("layer", ["embed", "block", "block_proj", "block.proj", "mixer", "kw", "head"])
@torch.no_grad()
def test_detector_sees_exactly_the_module_output(model: Toy, manager: HookManager, x: torch.Tensor, layer: str) -> None:
    ref = model.stages(x)
    det = LayerActivationDetector(layer)
    with manager.attached(det):
        out = model(x)
    assert torch.equal(out, ref["head"])
    expected = ref["block" if layer.startswith("block") else layer]
    assert det.activations is not None and torch.equal(det.activations, expected)
    assert det.calls == 1
    assert det.layer == layer.replace(".", "_")  # dotted paths resolve to the stable name


@torch.no_grad()
def test_pre_forward_detector_sees_the_input(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)
    head_in = LayerActivationDetector("head", HookType.PRE_FORWARD)
    kw_in = LayerActivationDetector("kw", "pre_forward")  # keyword-only input: found as hidden_states
    with manager.attached(head_in, kw_in):
        model(x)
    assert head_in.activations is not None and torch.equal(head_in.activations, ref["kw"])
    assert kw_in.activations is not None and torch.equal(kw_in.activations, ref["mixer"])


def test_detector_output_is_detached(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    det = LayerActivationDetector("embed")
    with manager.attached(det):
        model(x).sum().backward()  # the graph still works while a detector holds a detached copy
    assert det.activations is not None and not det.activations.requires_grad
    assert model.embed.weight.grad is not None


@torch.no_grad()
def test_detector_to_cpu_callback_and_clear(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    seen: list[torch.Tensor] = []
    det = LayerActivationDetector("embed", to_cpu=True, callback=seen.append)
    with manager.attached(det):
        model(x)
        model(x[:1])
    assert det.calls == 2 and len(seen) == 2
    assert det.activations is not None and det.activations.device.type == "cpu"
    assert seen[1].shape == (1, 5, D)
    det.clear()
    assert det.activations is None


@torch.no_grad()
def test_detector_buffer_is_written_in_place(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)
    buffer = torch.full((4, 6, D), -1.0)
    det = LayerActivationDetector("embed", buffer=buffer)
    with manager.attached(det):
        model(x)
        assert det.activations is not None
        assert det.activations.data_ptr() == buffer.data_ptr()  # a view of the buffer, no new allocation
        assert det.activations.shape == (2, 5, D)
        assert torch.equal(det.activations, ref["embed"])
        assert torch.equal(buffer[:2, :5], ref["embed"])
        assert bool((buffer[2:] == -1).all()) and bool((buffer[:, 5:] == -1).all())  # the rest untouched
        model(x[:1, :3])
    assert det.activations.data_ptr() == buffer.data_ptr()
    assert det.activations.shape == (1, 3, D)
    assert torch.equal(buffer[:1, :3], model.embed(x[:1, :3]))


@pytest.mark.parametrize("shape", [(1, 5, D), (2, 4, D), (2, 5, D - 1), (2 * 5, D)])
@torch.no_grad()
def test_detector_rejects_a_buffer_that_does_not_fit(
    model: Toy, manager: HookManager, x: torch.Tensor, shape: tuple[int, ...]
) -> None:
    det = LayerActivationDetector("embed", buffer=torch.zeros(shape))
    with manager.attached(det), pytest.raises(ValueError, match="does not fit the buffer"):
        model(x)
    assert manager.torch_handle_count() == 0


@torch.no_grad()
def test_model_input_and_output_detectors_at_root(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    inp, outp = ModelInputDetector(), ModelOutputDetector()
    assert inp.layer is None and inp.hook_type is HookType.PRE_FORWARD
    assert outp.layer is None and outp.hook_type is HookType.FORWARD
    mask = torch.ones(2, 5, dtype=torch.long)
    with manager.attached(inp, outp):
        assert manager.hooks("") == [inp, outp]
        out = model(input_ids=x, attention_mask=mask)
        assert inp.input_ids is not None and torch.equal(inp.input_ids, x)
        assert inp.attention_mask is not None and torch.equal(inp.attention_mask, mask)
        assert outp.output is not None and torch.equal(outp.output, out)
        model(x)  # positional input, no mask
        assert torch.equal(inp.input_ids, x) and inp.attention_mask is None
    assert inp.layer is None and outp.layer is None


@torch.no_grad()
def test_stop_forward_from_a_detector_propagates(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    def stop(_: torch.Tensor) -> None:
        raise StopForward

    later = LayerActivationDetector("head")
    with manager.attached(LayerActivationDetector("block", callback=stop), later), pytest.raises(StopForward):
        model(x)
    assert later.calls == 0  # the forward really ended at the block
    assert manager.torch_handle_count() == 0


# ---------------------------------------------------------------------- controllers


@torch.no_grad()
def test_controller_replaces_tensor_output(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)
    with manager.attached(FunctionController("head", lambda t: t + 1)):
        assert torch.allclose(model(x), ref["head"] + 1)
    assert torch.equal(model(x), ref["head"])  # gone after the block


@torch.no_grad()
def test_controller_replaces_first_element_of_tuple_output(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)
    det = LayerActivationDetector("mixer", HookType.PRE_FORWARD)
    with manager.attached(FunctionController("block", torch.zeros_like), det):
        out = model.block(ref["embed"])
        assert type(out) is tuple and len(out) == 2
        assert torch.equal(out[0], torch.zeros_like(ref["block"]))
        assert torch.equal(out[1], ref["block"].sum(-1))  # the rest of the tuple is left as computed
        model(x)
    assert det.activations is not None and bool((det.activations == 0).all())  # downstream sees the edit


@torch.no_grad()
def test_controller_on_dict_like_output(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)
    with manager.attached(FunctionController("mixer", lambda t: -t)):
        out = model.mixer(ref["block"])
        assert isinstance(out, AttrDict) and list(out) == ["hidden", "aux"]
        assert torch.equal(out["hidden"], -ref["mixer"])
        assert torch.equal(out.hidden, -ref["mixer"])
        assert torch.allclose(model(x), model.head(model.kw.lin(-ref["mixer"])))


@torch.no_grad()
def test_pre_forward_controller_replaces_input(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    zero_head = FunctionController("head", torch.zeros_like, HookType.PRE_FORWARD)
    with manager.attached(zero_head):
        out = model(x)
    assert torch.allclose(out, model.head.bias.expand(2, 5, D_OUT))


@torch.no_grad()
def test_pre_forward_controller_on_keyword_input(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    h = torch.randn(2, 5, D)
    with manager.attached(FunctionController("kw", lambda t: t * 2, "pre_forward")):
        out = model.kw(hidden_states=h, scale=0.5)
    assert torch.allclose(out, model.kw.lin(h * 2) * 0.5)  # other kwargs pass through untouched


def bad_shape(t: torch.Tensor) -> torch.Tensor:
    return t[:1]  # (1, 5, d): would broadcast silently if allowed


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (bad_shape, "returned shape"),
        (lambda t: t[..., :1], "returned shape"),
        (lambda t: t.double(), "returned dtype"),
        (lambda t: t.tolist(), "returned list, expected a torch.Tensor"),
        (lambda t: None, "returned NoneType"),
        (lambda t: t.to("meta"), "returned a tensor on meta"),
    ],
)
@pytest.mark.parametrize("hook_type", [HookType.FORWARD, HookType.PRE_FORWARD])
@torch.no_grad()
def test_controller_returning_the_wrong_thing_raises(
    model: Toy, manager: HookManager, x: torch.Tensor, fn: Any, message: str, hook_type: HookType
) -> None:
    with manager.attached(FunctionController("head", fn, hook_type)), pytest.raises(HookError, match=message):
        model(x)
    assert manager.torch_handle_count() == 0


@torch.no_grad()
def test_detector_and_controller_on_one_layer_run_in_attach_order(
    model: Toy, manager: HookManager, x: torch.Tensor
) -> None:
    ref = model.stages(x)
    log: list[tuple[str, torch.Tensor]] = []
    before = Recorder("embed", log, "before")
    ctrl = FunctionController("embed", lambda t: t * 3)
    after = Recorder("embed", log, "after")
    with manager.attached(before, ctrl, after):
        assert manager.torch_handle_count() == 1  # one torch handle serves all three
        out = model(x)
    assert [tag for tag, _ in log] == ["before", "after"]
    assert torch.equal(log[0][1], ref["embed"])
    assert torch.allclose(log[1][1], ref["embed"] * 3)
    assert not torch.allclose(out, ref["head"])


@torch.no_grad()
def test_two_controllers_chain(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)
    with manager.attached(FunctionController("head", lambda t: t + 1), FunctionController("head", lambda t: t * 2)):
        assert torch.allclose(model(x), (ref["head"] + 1) * 2)


@torch.no_grad()
def test_neuron_multiplier_changes_only_named_units(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)["head"]
    ctrl = NeuronMultiplierController("head", {0: 2.0, -1: 0.0})
    with manager.attached(ctrl):
        out = model(x)
    assert torch.allclose(out[..., 0], ref[..., 0] * 2)
    assert torch.equal(out[..., 1], ref[..., 1])  # untouched exactly, not e.g. +1
    assert bool((out[..., 2] == 0).all())
    assert ctrl.factors == {0: 2.0, -1: 0.0}


@torch.no_grad()
def test_neuron_multiplier_empty_factors_is_identity(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)["head"]
    with manager.attached(NeuronMultiplierController("head", {})):
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("index", [D_OUT, -D_OUT - 1, 100])
@torch.no_grad()
def test_neuron_multiplier_rejects_out_of_range(model: Toy, manager: HookManager, x: torch.Tensor, index: int) -> None:
    with (
        manager.attached(NeuronMultiplierController("head", {0: 1.0, index: 2.0}, name="mult")),
        pytest.raises(IndexError, match=rf"'mult': neuron indices \[{index}\] out of range for width {D_OUT}"),
    ):
        model(x)


@torch.no_grad()
def test_base_hooks_must_be_subclassed(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    for hook in (Detector("head"), Controller("head")):
        with manager.attached(hook), pytest.raises(NotImplementedError):
            model(x)


# ---------------------------------------------------------------------- enable / disable


@torch.no_grad()
def test_enable_and_disable_single_hooks(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)["head"]
    det = LayerActivationDetector("head")
    ctrl = FunctionController("head", lambda t: t + 1)
    with manager.attached(ctrl, det):
        ctrl.disable()
        det.disable()
        assert torch.equal(model(x), ref)
        assert det.calls == 0
        ctrl.enable()
        det.enable()
        assert torch.allclose(model(x), ref + 1)
        assert det.calls == 1


@torch.no_grad()
def test_enable_all_and_disable_all_by_kind(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)["head"]
    det = LayerActivationDetector("embed")
    ctrl = FunctionController("head", lambda t: t + 1)
    with manager.attached(det, ctrl):
        manager.disable_all(Controller)
        assert not ctrl.enabled and det.enabled
        assert torch.equal(model(x), ref) and det.calls == 1
        manager.disable_all()
        assert not det.enabled
        model(x)
        assert det.calls == 1
        manager.enable_all(Detector)
        assert det.enabled and not ctrl.enabled
        manager.enable_all()
        assert ctrl.enabled
        assert torch.allclose(model(x), ref + 1)


@torch.no_grad()
def test_controllers_disabled_restores_previous_states(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)["head"]
    on = FunctionController("head", lambda t: t + 1)
    off = FunctionController("head", lambda t: t * 100)
    det = LayerActivationDetector("head")
    off.disable()
    with manager.attached(on, off, det):
        with manager.controllers_disabled():
            assert not on.enabled and not off.enabled and det.enabled  # detectors keep running
            assert torch.equal(model(x), ref)
            assert det.activations is not None and torch.equal(det.activations, ref)
        assert on.enabled and not off.enabled  # the one disabled before stays disabled
        with pytest.raises(RuntimeError, match="boom"), manager.controllers_disabled():
            raise RuntimeError("boom")
        assert on.enabled and not off.enabled
        assert torch.allclose(model(x), ref + 1)


@torch.no_grad()
def test_paused_turns_every_hook_off_and_restores(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    ref = model.stages(x)["head"]
    det = LayerActivationDetector("embed")
    ctrl = FunctionController("head", lambda t: t + 1)
    off = LayerActivationDetector("head")
    off.disable()
    with manager.attached(det, ctrl, off):
        with manager.paused():
            assert not det.enabled and not ctrl.enabled and not off.enabled
            assert torch.equal(model(x), ref)
            assert det.calls == 0
        assert det.enabled and ctrl.enabled and not off.enabled  # the one off before stays off
        with pytest.raises(RuntimeError, match="probe"), manager.paused():
            raise RuntimeError("probe")
        assert det.enabled and ctrl.enabled and not off.enabled
        assert torch.allclose(model(x), ref + 1) and det.calls == 1 and off.calls == 0


# ---------------------------------------------------------------------- attach / detach bookkeeping


def test_attached_removes_hooks_even_when_the_block_raises(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    before = hook_dict_sizes(model)
    hooks = [
        LayerActivationDetector("embed"),
        LayerActivationDetector("embed", HookType.PRE_FORWARD),
        FunctionController("head", lambda t: t),
        ModelOutputDetector(),
    ]
    with pytest.raises(KeyError, match="inside"), manager.attached(*hooks) as got:
        assert got == tuple(hooks)
        assert manager.torch_handle_count() == 4
        assert hook_dict_sizes(model) != before
        raise KeyError("inside")
    assert manager.torch_handle_count() == 0
    assert manager.hooks() == []
    assert hook_dict_sizes(model) == before
    det = hooks[0]
    assert isinstance(det, LayerActivationDetector)
    model(x)
    assert det.calls == 0


def test_attached_cleans_up_when_a_later_attach_fails(model: Toy, manager: HookManager) -> None:
    before = hook_dict_sizes(model)
    first = LayerActivationDetector("embed")
    with pytest.raises(UnknownLayerError), manager.attached(first, LayerActivationDetector("nope")):
        pass
    assert manager.torch_handle_count() == 0 and manager.hooks() == []
    assert hook_dict_sizes(model) == before


def test_repeated_attach_detach_leaks_no_handles(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    before = hook_dict_sizes(model)
    for _ in range(20):
        with manager.attached(LayerActivationDetector("embed"), FunctionController("embed", lambda t: t)):
            model(x)
    assert hook_dict_sizes(model) == before and manager.torch_handle_count() == 0


def test_handles_count_per_layer_and_type(manager: HookManager) -> None:
    a = manager.attach(LayerActivationDetector("embed"))
    b = manager.attach(FunctionController("embed", lambda t: t))
    assert manager.torch_handle_count() == 1
    c = manager.attach(LayerActivationDetector("embed", HookType.PRE_FORWARD))
    d = manager.attach(LayerActivationDetector("head"))
    assert manager.torch_handle_count() == 3
    a.remove()
    assert manager.torch_handle_count() == 3  # b still needs the embed forward handle
    b.remove()
    assert manager.torch_handle_count() == 2
    b.remove()  # removing twice is harmless
    manager.detach_all()
    assert manager.torch_handle_count() == 0 and manager.hooks() == []
    assert c.hook.layer == "embed" and d.hook.layer == "head"


def test_handle_as_context_manager(model: Toy, manager: HookManager) -> None:
    handle = manager.attach(LayerActivationDetector("embed", name="det"))
    assert isinstance(handle, HookHandle)
    with handle as hook:
        assert manager.get("det") is hook
        assert len(model.embed._forward_hooks) == 1
    assert len(model.embed._forward_hooks) == 0
    with pytest.raises(KeyError, match="no hook 'det'"):
        manager.get("det")


def test_attaching_the_same_hook_twice_raises(manager: HookManager) -> None:
    det = LayerActivationDetector("embed", name="dup")
    manager.attach(det)
    with pytest.raises(HookError, match="'dup' is already attached"):
        manager.attach(det)
    with pytest.raises(HookError, match="already attached"):
        manager.attach(det, "head")  # even on another layer
    with pytest.raises(HookError, match="already attached"):
        manager.attach(LayerActivationDetector("head", name="dup"))  # ids are the identity
    assert manager.hooks() == [det] and manager.torch_handle_count() == 1


def test_attach_layer_argument_overrides_hook_layer(model: Toy, manager: HookManager, x: torch.Tensor) -> None:
    det = LayerActivationDetector("embed")
    manager.attach(det, "block.proj")
    assert det.layer == "block_proj"
    model(x)
    assert det.activations is not None and det.activations.shape == (2, 5, D)
    root = LayerActivationDetector("embed", name="root")
    manager.attach(root, "")
    assert root.layer is None
    assert manager.hooks("") == [root]


def test_inspection(manager: HookManager) -> None:
    det = LayerActivationDetector("embed")
    ctrl = FunctionController("block.proj", lambda t: t)
    root = ModelOutputDetector()
    manager.attach(det)
    manager.attach(ctrl)
    manager.attach(root)
    assert manager.hooks("embed") == [det]
    assert manager.hooks("block.proj") == [ctrl] == manager.hooks("block_proj")
    assert manager.hooks("head") == []
    assert manager.detectors() == [det, root]
    assert manager.controllers() == [ctrl]
    assert manager.get(det.id) is det
    with pytest.raises(UnknownLayerError):
        manager.hooks("nope")


# ---------------------------------------------------------------------- errors from odd modules


class NoTensorOut(nn.Module):
    def forward(self, x: torch.Tensor) -> str:
        return "not a tensor"


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.odd = NoTensorOut()

    def forward(self, x: torch.Tensor) -> str:
        return self.odd(x)


def test_hook_on_module_without_tensor_output_raises() -> None:
    manager = HookManager(LayerRegistry(Wrapper()))
    with manager.attached(LayerActivationDetector("odd")), pytest.raises(HookError, match="holds no tensor"):
        manager._layers.root(torch.zeros(1))


def test_pre_hook_on_call_without_tensor_input_raises() -> None:
    model = Wrapper()
    manager = HookManager(LayerRegistry(model))
    with (
        manager.attached(LayerActivationDetector("odd", HookType.PRE_FORWARD)),
        pytest.raises(HookError, match="without a tensor input"),
    ):
        model([1, 2])  # type: ignore[arg-type]


def test_unknown_layer_suggests_close_matches(manager: HookManager) -> None:
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'block_prj'; did you mean block_proj") as err:
        manager.attach(LayerActivationDetector("block_prj"))
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownLayerError, match="the model has 8 layers"):
        manager.attach(LayerActivationDetector("zzzzzzzzzzzzzzzzzz"))
    assert manager.torch_handle_count() == 0


# ---------------------------------------------------------------------- hook metadata


def test_hook_kinds_keys() -> None:
    assert set(HOOK_KINDS) == {
        "layer_activation_detector",
        "model_input_detector",
        "model_output_detector",
        "neuron_multiplier_controller",
    }
    assert HOOK_KINDS["layer_activation_detector"] is LayerActivationDetector
    assert all(issubclass(cls, Hook) and cls.kind == k for k, cls in HOOK_KINDS.items())


def test_hook_ids_repr_and_types() -> None:
    a, b = LayerActivationDetector("embed"), LayerActivationDetector("embed")
    assert a.id != b.id and a.id.startswith("LayerActivationDetector-")
    named = FunctionController("head", lambda t: t, "pre_forward", name="c1")
    assert named.id == "c1" and named.hook_type is HookType.PRE_FORWARD
    assert repr(named) == "FunctionController(id='c1', layer='head', pre_forward, on)"
    named.disable()
    assert repr(named).endswith("off)")
    with pytest.raises(ValueError):
        Hook("embed", "backward")
    assert issubclass(HookError, RuntimeError) and not issubclass(StopForward, RuntimeError)


# ---------------------------------------------------------------------- split_output / split_inputs


def test_split_output_forms() -> None:
    t, new = torch.ones(2), torch.zeros(2)
    primary, rebuild = split_output(t)
    assert primary is t and rebuild(new) is new

    primary, rebuild = split_output([t, 1])
    assert primary is t and rebuild(new) == [new, 1]

    primary, rebuild = split_output((t, "x"))
    assert primary is t
    rebuilt = rebuild(new)
    assert type(rebuilt) is tuple and rebuilt[0] is new and rebuilt[1] == "x"

    primary, rebuild = split_output(Pair(t, 5))
    assert primary is t
    rebuilt = rebuild(new)
    assert isinstance(rebuilt, Pair) and rebuilt.hidden is new and rebuilt.aux == 5

    plain = {"hidden": t, "aux": 1}
    primary, rebuild = split_output(plain)
    assert primary is t and rebuild(new) == {"hidden": new, "aux": 1}


@pytest.mark.parametrize("output", [None, "s", 3, (), [], {}, ("a", torch.ones(1)), {"a": 1, "b": torch.ones(1)}])
def test_split_output_without_a_leading_tensor(output: Any) -> None:
    primary, rebuild = split_output(output)
    assert primary is None and rebuild(torch.ones(1)) is output


def test_controller_on_plain_dict_output_with_method_named_key() -> None:
    class ValuesOut(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"values": x * 2}

    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ValuesOut()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.inner(x)

    root = Root()
    manager = HookManager(LayerRegistry(root))
    with manager.attached(FunctionController("inner", lambda t: t + 1)):
        out = root(torch.ones(2))
    assert torch.equal(out["values"], torch.full((2,), 3.0))


def test_split_inputs_forms() -> None:
    t, new = torch.ones(2), torch.zeros(2)
    primary, rebuild = split_inputs(("a", t, 3), {"k": 1})
    assert primary is t
    args, kwargs = rebuild(new)
    assert args[0] == "a" and args[1] is new and args[2] == 3 and kwargs == {"k": 1}

    h = torch.ones(3)
    primary, rebuild = split_inputs((), {"input_ids": t, "hidden_states": h})
    assert primary is h  # hidden_states wins over other tensor kwargs
    args, kwargs = rebuild(new)
    assert args == () and kwargs["hidden_states"] is new and kwargs["input_ids"] is t

    primary, rebuild = split_inputs((), {"other": 1, "custom": t})
    assert primary is t and rebuild(new)[1]["custom"] is new

    primary, rebuild = split_inputs((1,), {"k": "v"})
    assert primary is None and rebuild(new) == ((1,), {"k": "v"})


def iter_modules(model: nn.Module) -> Iterator[str]:
    yield from (name for name, _ in model.named_modules() if name)


def test_registry_names_match_the_model(model: Toy) -> None:
    # The tests above rely on these names; a renaming would make them test the wrong layers.
    assert LayerRegistry(model).names() == [p.replace(".", "_") for p in iter_modules(model)]
