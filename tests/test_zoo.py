"""The zoo's text-to-speech architectures (VITS, FastSpeech 2 Conformer) on the CPU: a fixed-length waveform
whatever the input, deterministic, and a forward with nothing a CUDA graph cannot capture (run on the meta
device, where reading a value back raises). Skipped without torch and transformers, as on CI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jigsawserve.orchestrator.spec.appspec import load_app

ROOT = Path(__file__).resolve().parents[1]
TTS = ["vits", "fastspeech2_conformer"]
TOKENS, FRAMES = 8, 2  # small: the real 64 x 6 takes about a second per request on this CPU
HOP = 256  # waveform samples per frame: the HiFi-GAN upsampling 8 x 8 x 2 x 2 of both


@pytest.fixture
def zoo():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from jigsawserve.triton_backend import zoo
    return zoo


@pytest.fixture(params=TTS)
def small(request, zoo, monkeypatch) -> str:
    """A TTS arch at TOKENS x FRAMES, registered under its own name."""
    make = {"vits": zoo._vits, "fastspeech2_conformer": zoo._fastspeech2}[request.param]
    monkeypatch.setitem(zoo.ARCHS, request.param, lambda: make(tokens=TOKENS, frames_per_token=FRAMES))
    return request.param


def test_tts_runner_gives_a_fixed_length_waveform(zoo, small):
    import torch
    runner = zoo.GraphRunner(small, width=16, max_batch=2, device="cpu")
    rows = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    out = runner(rows)
    assert out.shape == (3, 16) and np.isfinite(out).all()
    assert list(runner.load_times) == ["context", "imports", "build", "b1", "b2"]  # where its load time went
    with torch.inference_mode():
        before = runner.run_batch(2).clone()
        runner(rows[:2] * 10 + 3)  # other symbols: other samples, same length
        after = runner.run_batch(2)
    assert before.shape == after.shape == (2, TOKENS * FRAMES * HOP) and not torch.equal(before, after)
    np.testing.assert_array_equal(zoo.GraphRunner(small, width=16, max_batch=2, device="cpu")(rows), out)


def test_capture_policies(zoo, small, monkeypatch):
    """By default every size is captured. Under "cheap", sizes between 1 and the max batch are captured when
    the max batch's capture was cheap; otherwise a batch of 3 runs padded to 4. Given ``sizes`` (the
    profiler's) are always all captured."""
    monkeypatch.setattr(zoo, "CHEAP_CAPTURE_S", 0.0)
    monkeypatch.delenv(zoo.CAPTURE_ENV, raising=False)
    assert zoo.GraphRunner(small, width=16, max_batch=4, device="cpu").sizes == [1, 2, 4]
    monkeypatch.setenv(zoo.CAPTURE_ENV, "cheap")
    runner = zoo.GraphRunner(small, width=16, max_batch=4, device="cpu")
    assert runner.sizes == [1, 4] and list(runner.load_times)[3:] == ["b1", "b4"]
    rows = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    out = runner(rows)
    assert out.shape == (3, 16) and np.isfinite(out).all()
    np.testing.assert_array_equal(zoo.GraphRunner(small, width=16, max_batch=4, device="cpu")(rows), out)
    assert zoo.GraphRunner(small, width=16, max_batch=4, device="cpu", sizes=[1, 2, 4]).sizes == [1, 2, 4]
    # the server's environment picks the policy: the largest size below the max too, every size, or an error
    monkeypatch.setenv(zoo.CAPTURE_ENV, "half")
    assert zoo.GraphRunner(small, width=16, max_batch=8, device="cpu").sizes == [1, 4, 8]
    monkeypatch.setenv(zoo.CAPTURE_ENV, "all")
    assert zoo.GraphRunner(small, width=16, max_batch=8, device="cpu").sizes == [1, 2, 4, 8]
    monkeypatch.setenv(zoo.CAPTURE_ENV, "most")
    with pytest.raises(ValueError, match="JIGSAW_CAPTURE: expected one of cheap, half, all, background, got 'most'"):
        zoo.GraphRunner(small, width=16, max_batch=4, device="cpu")


def test_background_captures(zoo, small, monkeypatch):
    """Policy "background": ready with batch 1 and the max, the sizes in between captured in a thread while
    the runner serves (padded meanwhile), largest first; ``close`` lets the capture in progress finish and
    starts no other."""
    import threading
    monkeypatch.setenv(zoo.CAPTURE_ENV, "background")
    rows = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
    runner = zoo.GraphRunner(small, width=16, max_batch=8, device="cpu")
    assert runner.wait_captures(timeout_s=60) and runner.sizes == [1, 2, 4, 8]
    assert list(runner.load_times)[3:] == ["b1", "b8"] and list(runner.background_times) == ["b4", "b2"]
    out = runner(rows)
    assert out.shape == (3, 16) and np.isfinite(out).all()
    assert runner.padded_rows == 1 and runner.capture_error is None
    entered, gate = threading.Event(), threading.Event()
    capture = zoo.GraphRunner._capture

    def held(self, batch, thread_local=False):
        if thread_local:
            entered.set()
            gate.wait(60)
        return capture(self, batch, thread_local)
    monkeypatch.setattr(zoo.GraphRunner, "_capture", held)
    runner = zoo.GraphRunner(small, width=16, max_batch=8, device="cpu")
    assert entered.wait(60) and runner.sizes == [1, 8]
    assert runner(rows).shape == (3, 16) and runner.padded_rows == 5   # served meanwhile, padded to 8
    closing = threading.Thread(target=runner.close, daemon=True)
    closing.start()
    while not runner._stop.is_set():
        closing.join(0.01)
    gate.set()
    closing.join(60)
    assert runner.sizes == [1, 4, 8] and list(runner.background_times) == ["b4"]


@pytest.mark.parametrize("arch", TTS)
def test_tts_forward_reads_nothing_back_from_the_device(zoo, arch):
    """Meta tensors have no data: .item(), .tolist(), nonzero, boolean masks and value-dependent shapes raise,
    as they cannot be captured in a CUDA graph. transformers' own forward meets them; the zoo's does not, and
    needs no host copies either. At full size: the meta device computes nothing."""
    import torch
    meta = torch.device("meta")
    spec = zoo.ARCHS[arch]()
    with meta:
        model = spec.build()
    model = model.to(device=meta, dtype=torch.float16).eval()
    copies = zoo.CaptureCopies()
    with torch.inference_mode(), meta, copies:
        out = spec.forward(model, spec.inputs(2, meta, torch.float16))
        with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
            model(input_ids=torch.zeros(2, TOKENS, dtype=torch.long))
    assert tuple(out.shape) == (2, zoo.SPEECH_TOKENS * zoo.FRAMES_PER_TOKEN * HOP) and copies.replaced == 0


def test_ar_app_speaks_with_the_tts_variants():
    """ar.yaml's last task is text to speech, by the two TTS architectures of the zoo."""
    app = load_app(ROOT / "examples" / "h200" / "ar.yaml")
    speak = next(t for t in app.tasks if t.name == "speak")
    assert {v.name: v.runtime["arch"] for v in speak.variants} == {v: v for v in TTS}
    assert [(e.src, e.dst, e.factor) for e in app.edges][-1] == ("describe", "speak", 1.0)
