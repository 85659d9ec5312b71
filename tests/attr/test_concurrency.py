"""Many threads explaining with one shared model: every map equals the single-threaded one,
and the model is never touched, not even while the calls run (issue 16, "Concurrency").

One method object per registered method is shared by all threads too (each call explains
its own private view of the model). A watcher thread compares the model with its state
before the calls, continuously, while they run.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_vit.attr import get_method, list_methods, method_info
from captum_vit.models.view import _HOOK_DICTS
from captum_vit.testing import input_for, make_cnn, make_vit, options_for

THREADS, CALLS = 4, 25


def model_state(model: nn.Module) -> dict[str, Any]:
    """Everything explaining must leave as it is: the module tree (objects, classes, child
    dicts), every flag and instance attribute, every hook dict, and each parameter and buffer
    (object, storage, dtype, ``requires_grad``, ``.grad``, and bytes)."""
    state: dict[str, Any] = {}
    for name, m in model.named_modules():
        state[f"{name}:module"] = (id(m), type(m), tuple((k, id(c)) for k, c in m._modules.items()))
        state[f"{name}:attrs"] = {
            k: v for k, v in vars(m).items() if isinstance(v, (bool, int, float, str, type(None))) or k == "forward"
        }
        for hooks in _HOOK_DICTS:
            d = m.__dict__.get(hooks)
            state[f"{name}:{hooks}"] = None if d is None else tuple((k, id(v)) for k, v in d.items())
        for kind, store in (("param", m._parameters), ("buffer", m._buffers)):
            for k, t in store.items():
                if t is not None:
                    grad = None if t.grad is None else t.grad.clone()
                    state[f"{name}.{k}:{kind}"] = (id(t), t.data_ptr(), t.dtype, t.requires_grad, grad)
                    state[f"{name}.{k}:bytes"] = t.detach().clone()
    globals_ = torch.nn.modules.module
    for hooks in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        state[hooks] = tuple(getattr(globals_, hooks, {}).keys())
    return state


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = [k for k in before.keys() ^ after.keys()]
    for k in before.keys() & after.keys():
        a, b = before[k], after[k]
        same = torch.equal(a, b) if isinstance(a, Tensor) else _equal(a, b)
        if not same:
            out.append(k)
    return out


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)
    return bool(a == b)


def _build(name: str, model: nn.Module) -> Attribution:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_method(name)(model, **options_for(name, model))


def _calls(name: str) -> int:
    # MUTEX scores 54 masked sequences per image, LTX finetunes: fewer calls keep the test short
    return {"ltx": 10, "mutex": 10}.get(name, CALLS)


def test_threads_share_one_model_and_get_single_threaded_maps() -> None:
    vit, cnn = make_vit("cls").train(), make_cnn(channels=(8, 16, 32, 64))  # train(): explained in eval
    vit.blocks[0].register_forward_hook(lambda *_: None)  # a user's hook stays and is not duplicated
    cases: list[tuple[str, nn.Module, Attribution]] = []
    for name in list_methods():
        model = vit if "vit" in method_info(name).model_kinds else cnn
        cases.append((name, model, _build(name, model)))
    inputs = {
        id(m): [input_for(m, batch=2, seed=s, size=(64, 64) if m is cnn else None) for s in (1, 2)] for m in (vit, cnn)
    }
    targets = [0, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty-map warnings of random tiny models
        expected = {
            (name, s): method.attribute(inputs[id(m)][s], target=targets) for name, m, method in cases for s in (0, 1)
        }
    before = {id(m): model_state(m) for m in (vit, cnn)}

    failures: list[str] = []
    done = threading.Event()
    checks = [0]

    def watch() -> None:
        while not done.is_set():
            for m in (vit, cnn):
                changed = differences(before[id(m)], model_state(m))
                if changed:
                    failures.append(f"model changed during the calls: {changed[:5]}")
                    return
            checks[0] += 1
            time.sleep(0.001)

    def work(t: int) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for call in range(CALLS):
                    for k in range(len(cases)):  # each thread visits the methods in its own order
                        name, m, method = cases[(k + t) % len(cases)]
                        if call >= _calls(name):
                            continue
                        s = (call + t) % 2
                        got = method.attribute(inputs[id(m)][s], target=targets)
                        if not torch.equal(got, expected[name, s]):
                            diff = float((got - expected[name, s]).abs().max())
                            failures.append(f"{name} thread {t} call {call}: max difference {diff:.3g}")
        except Exception as e:  # noqa: BLE001 - reported below with the thread
            failures.append(f"thread {t}: {type(e).__name__}: {e}")

    watcher = threading.Thread(target=watch)
    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    watcher.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    watcher.join()
    assert not failures, "\n".join(failures[:10])
    assert checks[0] > 10, "the watcher barely ran"
    for m in (vit, cnn):
        assert not differences(before[id(m)], model_state(m))
    assert vit.training  # the user's flag stays


def test_model_state_detects_what_the_old_instrumentation_did() -> None:
    """The check is sharp: toggling ``fused_attn`` or leaving a hook is seen."""
    model = make_vit("cls")
    before = model_state(model)
    model.blocks[1].attn.fused_attn = not model.blocks[1].attn.fused_attn
    assert differences(before, model_state(model)) == ["blocks.1.attn:attrs"]
    model.blocks[1].attn.fused_attn = not model.blocks[1].attn.fused_attn
    handle = model.norm_pre.register_forward_hook(lambda *_: None)
    assert differences(before, model_state(model)) == ["norm_pre:_forward_hooks"]
    handle.remove()
    assert not differences(before, model_state(model))
