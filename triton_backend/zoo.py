"""Real model architectures (torchvision, transformers) with random weights, run as captured CUDA graphs.

A variant's ``runtime`` in the app spec selects one: ``{kind: torch, arch: <name>}`` with ``arch`` a
key of ``ARCHS``. Weights are random (no hub downloads); the accuracy a plan uses is the variant's
published figure from the app spec. Requests carry ``[rows, width]`` FP32 descriptors: each row is
expanded on the device into the architecture's native input (an image, or an image plus a caption
prefix), so the GPU does the model's real work while the graph's tensors stay small.

On CUDA every batch size the runner may see is captured once as a ``torch.cuda.CUDAGraph`` (static
input buffer) and replayed: eager PyTorch at small batch is bound by kernel launches, and its latency
then ignores the GPU share it was given. On a CPU the same modules run eagerly (tests, development).

What runs per family:
- classification (ResNet, EfficientNet, VGG): the whole network on 3x224x224 images (EfficientNets
  at their evaluation crop, 224 for B0 to 600 for B7).
- detection (SSDlite, SSD, RetinaNet, FCOS): backbone + FPN + dense head on a fixed-size image; box
  decoding and NMS are skipped, since random weights give no real detections (fan-out comes from
  the app spec's edge factors).
- captioning (GIT): vision encoder + text decoder in one teacher-forced pass over a fixed-length
  caption (``CAPTION_TOKENS``); the per-token steps of autoregressive decoding are not replayed.
- tts (VITS, FastSpeech 2 Conformer + HiFi-GAN): text encoder, expansion to frames, spectrogram
  model, HiFi-GAN vocoder, from ``SPEECH_TOKENS`` input symbols to a waveform. The duration predictor
  is skipped: its durations make the output length data-dependent (no static graph), so every token
  lasts a fixed ``FRAMES_PER_TOKEN`` frames, as fan-out uses the app spec's mean factors.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

CAPTION_TOKENS = 20
# a spoken caption: 64 characters is about 11 words (COCO captions average 10.5); LJSpeech has 6.57 s of
# speech per 99.9 characters (13,100 clips, 1,308,674 characters, 23:55:17), 5.66 frames of 256 samples
# at 22.05 kHz per character, rounded to 6: 384 frames, 98,304 samples (4.5 s) per request
SPEECH_TOKENS = 64
FRAMES_PER_TOKEN = 6
VITS_LATENT_CHANNELS = 192  # VitsConfig's flow_size: the channels of the prior the noise samples


class CaptureCopies(TorchFunctionMode):
    """Host data a forward moves to the device, made capturable. CUDA graph capture rejects copies from
    pageable host memory, which transformers' eager attention masks make (e.g. GIT's
    ``torch.where(mask, torch.tensor(0.0, device=...), min)``, or ``torch.tensor(0.0)`` under a CUDA
    default device). Inside this mode:

    - ``torch.tensor(<python scalar>)`` bound for a device is a fill kernel there;
    - other ``torch.tensor(data)`` bound for a CUDA device, and ``.to``/``.cuda`` of a CPU tensor onto
      one, copy from a pinned host copy that ``keep`` holds for as long as the graph lives (a graph
      replays the copy from that buffer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.replaced = 0
        self.keep: list[torch.Tensor] = []

    @staticmethod
    def _target(device: Any) -> torch.device:
        return torch.device(device) if device is not None else torch.get_default_device()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is torch.tensor and len(args) == 1 and set(kwargs) <= {"device", "dtype"}:
            target = self._target(kwargs.get("device"))
            if target.type != "cpu":
                self.replaced += 1
                if isinstance(args[0], (bool, int, float)):
                    return torch.full((), args[0], device=target, dtype=kwargs.get("dtype"))
                return self._pinned(torch.tensor(args[0], dtype=kwargs.get("dtype"), device="cpu"), target)
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args and isinstance(args[0], torch.Tensor):
            src = args[0]
            if src.device.type == "cpu" and torch.cuda.is_available() and not src.is_pinned():
                target = torch._C._nn._parse_to(*args[1:], **kwargs)[0] if func is torch.Tensor.to else None
                if func is torch.Tensor.cuda or (target is not None and target.type == "cuda"):
                    self.replaced += 1
                    return func(self._keep(src.pin_memory()), *args[1:], **kwargs)
        return func(*args, **kwargs)

    def _keep(self, host: torch.Tensor) -> torch.Tensor:
        self.keep.append(host)
        return host

    def _pinned(self, host: torch.Tensor, target: torch.device) -> torch.Tensor:
        if target.type != "cuda":
            return host.to(target)
        return self._keep(host.pin_memory()).to(target, non_blocking=True)


@dataclass(frozen=True)
class Arch:
    """How to build one architecture and feed it: ``inputs(batch, device, dtype)`` makes its static inputs."""

    family: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, torch.device, torch.dtype], dict[str, torch.Tensor]]
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def _image(size: int) -> Callable[[int, torch.device, torch.dtype], dict[str, torch.Tensor]]:
    def make(batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
        return {"x": x.contiguous(memory_format=torch.channels_last)}
    return make


def _classifier(name: str, size: int = 224) -> Arch:
    import torchvision
    return Arch("classification", lambda: getattr(torchvision.models, name)(weights=None), _image(size),
                lambda m, i: m(i["x"]))


def _dense_head(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    features = model.backbone(inputs["x"])
    head = model.head(list(features.values()))
    return head["cls_logits"]


def _detector(name: str, size: int) -> Arch:
    import torchvision
    return Arch("detection", lambda: getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None),
                _image(size), _dense_head)


# optional packages transformers imports whenever they are installed, built against numpy's C API, in
# dependency order (scikit-learn needs scipy), with the modules of theirs it imports (scipy loads its
# submodules lazily: a plain ``import scipy`` succeeds where ``scipy.optimize`` fails)
NUMPY_BUILT = {"scipy": ("scipy.optimize", "scipy.sparse"), "sklearn": ("sklearn.metrics",), "pandas": ("pandas",),
               "numba": ("numba",), "cv2": ("cv2",)}
HIDDEN: list[str] = []
_SETTLED: list[bool] = []  # non-empty once this process has hidden what it must


def _verdict_path(specs: dict[str, Any], cache_dir: Path | None) -> Path:
    """Where this environment's verdict is kept: named by the interpreter, numpy and each installed
    package's location and modification time (an upgrade is a new environment)."""
    parts = [sys.executable, sys.version, np.__version__, str(np.__file__)]
    for pkg, spec in sorted(specs.items()):
        origin = spec.origin or ""
        parts += [pkg, origin, str(os.stat(origin).st_mtime_ns) if os.path.exists(origin) else ""]
    digest = hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]
    return (cache_dir or Path(tempfile.gettempdir())) / f"jigsaw-unusable-{digest}.json"


def _hide(pkg: str) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == pkg]:
        del sys.modules[name]
    sys.modules[pkg] = None  # type: ignore[assignment]
    HIDDEN.append(pkg)


def hide_unusable(packages: dict[str, tuple[str, ...]] = NUMPY_BUILT, cache_dir: Path | None = None) -> list[str]:
    """Make each of ``packages`` that is installed but fails to import here look absent; the hidden ones.

    Runner stubs put numpy 1.x first on their path (the 2.51 Python backend needs it), while the host's
    packages may be built for numpy 2 (on the H200, ``transformers.generation`` imports scikit-learn,
    which imports scipy, which raises AttributeError on ``np.long``). transformers imports such optional
    packages whenever ``importlib.util.find_spec`` finds them, and then no model can be built; with
    ``sys.modules[pkg] = None`` find_spec says they are absent, and transformers skips them.

    Trying the imports costs every new runner process its time (a load on the apply's path), so the
    first process of an environment keeps its verdict in ``cache_dir`` (the temporary directory) and
    the next ones hide the same packages without trying them."""
    if _SETTLED:
        return list(HIDDEN)
    _SETTLED.append(True)
    specs = {pkg: spec for pkg in packages if (spec := importlib.util.find_spec(pkg))}
    path = _verdict_path(specs, cache_dir)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = None
    if isinstance(known, list):
        for pkg in known:
            if pkg in specs:
                _hide(pkg)
        return list(HIDDEN)
    unusable = []
    for pkg, modules in packages.items():
        if pkg not in specs:
            continue
        try:
            for module in modules:
                importlib.import_module(module)
        except Exception:  # noqa: BLE001 (ImportError, AttributeError, ValueError: any failure hides it)
            _hide(pkg)
            unusable.append(pkg)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    try:  # concurrent first processes write the same verdict; the rename keeps the file whole
        partial.write_text(json.dumps(unusable))
        partial.replace(path)
    except OSError:
        pass  # no cache: the next process tries the imports again
    return list(HIDDEN)


def _git(vision: dict[str, int]) -> Arch:
    hide_unusable()
    from transformers.models.git.modeling_git import GitConfig, GitForCausalLM

    def build() -> torch.nn.Module:
        return GitForCausalLM(GitConfig(vision_config=vision, hidden_size=768, num_hidden_layers=6,
                                        num_attention_heads=12, intermediate_size=3072))

    def inputs(batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        pixels = torch.randn(batch, 3, vision["image_size"], vision["image_size"], device=device, dtype=dtype)
        tokens = torch.randint(1000, 2000, (batch, CAPTION_TOKENS), device=device)
        return {"x": pixels, "input_ids": tokens}

    return Arch("captioning", build, inputs,
                lambda m, i: m(input_ids=i["input_ids"], pixel_values=i["x"]).logits[:, -1])


def _speech_inputs(tokens: int, frames: int, noise_channels: int
                   ) -> Callable[[int, torch.device, torch.dtype], dict[str, torch.Tensor]]:
    """Float symbol descriptors ``x`` [batch, tokens] (the forward maps them to ids: the runner writes
    request data into ``x``), and a fixed latent noise [batch, noise_channels, frames] where the model samples."""
    def make(batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        inputs = {"x": torch.rand(batch, tokens, device=device, dtype=dtype)}
        if noise_channels:
            inputs["noise"] = torch.randn(batch, noise_channels, frames, device=device, dtype=dtype)
        return inputs
    return make


def _token_ids(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Symbol ids from float descriptors, on the device (no host read)."""
    return (x.float() * 1000).long().remainder(vocab_size)


def _repeat_frames(t: torch.Tensor, frames: int, dim: int) -> torch.Tensor:
    """Each step of ``t`` along ``dim`` repeated ``frames`` times: a static repeat_interleave (expand, copy)."""
    shape = list(t.shape)
    shape.insert(dim + 1, frames)
    return t.unsqueeze(dim + 1).expand(shape).flatten(dim, dim + 1)


def _vits(tokens: int = SPEECH_TOKENS, frames_per_token: int = FRAMES_PER_TOKEN) -> Arch:
    """VITS (Kim et al., 2021) as transformers' ``VitsConfig`` defaults build it: the paper's LJSpeech model
    (6-layer text encoder, 4 coupling flows, HiFi-GAN V1 decoder; transformers' 38-symbol vocabulary). The
    forward replaces ``VitsModel``'s (predicted durations, then a mask and alignment of data-dependent length):
    the text encoder's prior, expanded by fixed durations, sampled with fixed noise, flow reversed, decoded."""
    hide_unusable()
    from transformers import VitsConfig, VitsModel

    def build() -> torch.nn.Module:
        return VitsModel(VitsConfig())

    def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = inputs["x"]
        text = model.text_encoder(input_ids=_token_ids(x, model.config.vocab_size),
                                  padding_mask=torch.ones_like(x).unsqueeze(-1))
        means = _repeat_frames(text.prior_means.transpose(1, 2), frames_per_token, 2)
        log_variances = _repeat_frames(text.prior_log_variances.transpose(1, 2), frames_per_token, 2)
        latents = means + inputs["noise"] * torch.exp(log_variances) * model.noise_scale
        spectrogram = model.flow(latents, torch.ones_like(latents[:, :1]), reverse=True)
        return model.decoder(spectrogram).squeeze(1)

    return Arch("tts", build, _speech_inputs(tokens, tokens * frames_per_token, VITS_LATENT_CHANNELS), forward)


def _fastspeech2(tokens: int = SPEECH_TOKENS, frames_per_token: int = FRAMES_PER_TOKEN) -> Arch:
    """FastSpeech 2 with Conformer blocks and a HiFi-GAN V1 vocoder (ESPnet's, as transformers'
    ``FastSpeech2ConformerWithHifiGan`` defaults build it). The forward replaces the model's (its length
    regulator sizes the output by the predicted durations): encoder, pitch and energy embeddings, expansion by
    fixed durations, decoder, postnet, vocoder."""
    hide_unusable()
    from transformers import FastSpeech2ConformerWithHifiGan, FastSpeech2ConformerWithHifiGanConfig

    def build() -> torch.nn.Module:
        return FastSpeech2ConformerWithHifiGan(FastSpeech2ConformerWithHifiGanConfig())

    def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        fs2 = model.model
        hidden = fs2.encoder(_token_ids(inputs["x"], fs2.vocab_size), None)[0]
        hidden = hidden + fs2.energy_embed(fs2.energy_predictor(hidden)) + fs2.pitch_embed(fs2.pitch_predictor(hidden))
        hidden = fs2.decoder(_repeat_frames(hidden, frames_per_token, 1), None)[0]
        return model.vocoder(fs2.speech_decoder_postnet(hidden)[1])

    return Arch("tts", build, _speech_inputs(tokens, tokens * frames_per_token, 0), forward)


_GIT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "image_size": 224, "patch_size": 16}
_GIT_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
              "image_size": 224, "patch_size": 14}

ARCHS: dict[str, Callable[[], Arch]] = {
    **{n: (lambda n=n: _classifier(n)) for n in
       ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]},
    # EfficientNets at the crop size torchvision evaluates each at (its published accuracy's)
    **{f"efficientnet_b{i}": (lambda i=i, s=s: _classifier(f"efficientnet_b{i}", s))
       for i, s in enumerate((224, 240, 288, 300, 380, 456, 528, 600))},
    "ssdlite320_mobilenet_v3_large": lambda: _detector("ssdlite320_mobilenet_v3_large", 320),
    "ssd300_vgg16": lambda: _detector("ssd300_vgg16", 300),
    "retinanet_resnet50_fpn": lambda: _detector("retinanet_resnet50_fpn", 640),
    "retinanet_resnet50_fpn_v2": lambda: _detector("retinanet_resnet50_fpn_v2", 640),
    "fcos_resnet50_fpn": lambda: _detector("fcos_resnet50_fpn", 640),
    "git-base": lambda: _git(_GIT_BASE),
    "git-large": lambda: _git(_GIT_LARGE),
    "vits": _vits,
    "fastspeech2_conformer": _fastspeech2,
}


# a capture of the max batch slower than this (seconds) means a costly architecture: the sizes in between
# are skipped. Measured on the H200 (bench/load_parts.py, runner logs): 1.5-4.2 s per size for
# EfficientNets, where cuDNN builds its plans per shape in each new process; 0.04-0.6 s for the other
# architectures measured
CHEAP_CAPTURE_S = 1.0
# which sizes a serving runner captures (``$JIGSAW_CAPTURE`` of the server, read by each runner): "all"
# (the default) every size; "cheap" every size where the max's capture was cheap, else batch 1 and the
# max; "half" as "cheap", but a costly architecture also captures the largest size below its max. On the
# H200, traffic's EfficientNet car runners padded every batch to their max under "cheap" (a request waited
# 17.6-27 ms in their queue); under "all" 1.8-7.6 ms, for applies of 13.4 s instead of 9-10 s on average
# (bench/results/h200-eval/results.md, 2026-11-29). "background": batch 1 and the max before the runner
# is ready, every size in between after it, in a thread, while it serves (each in use once captured):
# applies as short as "cheap"'s, batches as "all"'s a few seconds later
CAPTURE_ENV, CAPTURE_POLICIES = "JIGSAW_CAPTURE", ("cheap", "half", "all", "background")


def capture_policy() -> str:
    """The runners' capture policy: ``$JIGSAW_CAPTURE``, "all" when unset."""
    policy = os.environ.get(CAPTURE_ENV, "all")
    if policy not in CAPTURE_POLICIES:
        raise ValueError(f"{CAPTURE_ENV}: expected one of {', '.join(CAPTURE_POLICIES)}, got {policy!r}")
    return policy


def batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes a serving runner of ``max_batch`` may capture: 1, the powers of two below it, and it."""
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < max_batch]
    return sizes + [max_batch]


class GraphRunner:
    """One architecture on one device, replayed per batch size; ``__call__`` maps [n, width] -> [n, width]."""

    def __init__(self, arch: str, width: int, max_batch: int, device: str | None = None,
                 dtype: str = "float16", seed: int = 0, sizes: list[int] | None = None) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(sorted(ARCHS))})")
        self.width, self.max_batch = width, max_batch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = getattr(torch, dtype) if self.device.type == "cuda" else torch.float32
        # where a load's time goes (seconds): the CUDA context, the imports, the build, each batch size's capture
        self.load_times: dict[str, float] = {}
        started = time.monotonic()
        if self.device.type == "cuda":
            torch.cuda.init()
            torch.empty(1, device=self.device)  # the context is created here, under the process's MPS share
        self.load_times["context"] = time.monotonic() - started
        started = time.monotonic()
        self.spec = ARCHS[arch]()  # imports the architecture's library (torchvision, transformers)
        self.load_times["imports"] = time.monotonic() - started
        started = time.monotonic()
        torch.manual_seed(seed)
        with torch.device(self.device):
            model = self.spec.build()
        model = model.to(device=self.device, dtype=self.dtype).eval()
        if self.spec.family in ("classification", "detection"):
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        planned = sorted(sizes) if sizes else batch_sizes(max_batch)
        self.graphs: dict[int, tuple[Any, dict[str, torch.Tensor], torch.Tensor]] = {}
        self._kept: list[list[torch.Tensor]] = []  # pinned host buffers the graphs copy from
        # host staging buffers (pinned on CUDA, so copies are asynchronous) and a blocking-sync event:
        # a spinning wait would hold a CPU core per runner instance while its batch runs
        pinned = self.device.type == "cuda"
        self._shift = torch.zeros(self.max_batch, pin_memory=pinned)
        self._result = torch.zeros(self.max_batch, self.width, pin_memory=pinned)
        self._done = torch.cuda.Event(blocking=True) if pinned else None
        self.load_times["build"] = time.monotonic() - started
        # batch 1 and the max first; without ``sizes`` given, the sizes in between as ``capture_policy()``
        # says (by default all of them). A batch between two captured sizes runs padded to the larger one,
        # never slower than the full batch the plan budgets, but a runner that pads every batch to its max
        # is busy at any load and every request waits for the batch in progress (bench/padding.py); each
        # size costs load time on every apply
        policy = "all" if sizes else capture_policy()
        ends, between = sorted({planned[0], planned[-1]}), planned[1:-1]
        half = between[-1:] if policy == "half" else []
        self.padded_rows = 0  # rows added to fill batches up to a captured size (what the runner exports)
        self._stop = threading.Event()
        self._background: threading.Thread | None = None
        # a capture and a replay never overlap: torch (to 2.11 at least) flags the default generator during
        # any capture, and a replay meanwhile raises (pytorch#172390); the warm-ups before a capture do not
        # hold it
        self._replaying = threading.Lock()
        # the background captures (per size: wall-clock start, seconds) and their error, apart from
        # ``load_times``, which the server logs as the runner becomes ready, while they go on
        self.background_times: dict[str, tuple[float, float]] = {}
        self.capture_error: str | None = None
        with torch.inference_mode():
            for b in ends + half + [x for x in between if x not in half]:
                if policy == "background" and b in between:
                    break
                if (policy != "all" and b in between and b not in half
                        and self.load_times[f"b{planned[-1]}"] > CHEAP_CAPTURE_S):
                    break
                self._add(b)
        if policy == "background" and between:
            self._background = threading.Thread(target=self._capture_rest, args=(between,), daemon=True,
                                                name="jigsaw-capture")
            self._background.start()

    def _add(self, batch: int, thread_local: bool = False) -> None:
        """Capture ``batch`` and put it in use: ``sizes`` is replaced, never changed in place, so that a
        batch being served picks from a consistent list."""
        started, at = time.monotonic(), time.time()
        self.graphs[batch] = self._capture(batch, thread_local)
        if thread_local:
            self.background_times[f"b{batch}"] = (at, time.monotonic() - started)
        else:
            self.load_times[f"b{batch}"] = time.monotonic() - started
        self.sizes = sorted(self.graphs)

    def _capture_rest(self, batches: list[int]) -> None:
        """The background captures (policy "background"), largest first (a batch pads to the next size
        up: the largest gap closes first), until ``close``. A failed capture ends them: the runner keeps
        serving at the sizes it has."""
        try:
            # a stream of this thread's own: the captures' warm-ups must not queue behind, or ahead of, the
            # batches the serving thread runs on the default stream
            side = torch.cuda.stream(torch.cuda.Stream()) if self.device.type == "cuda" else contextlib.nullcontext()
            with torch.inference_mode(), side:
                for b in sorted(batches, reverse=True):
                    if self._stop.is_set():
                        return
                    self._add(b, thread_local=True)
        except Exception as exc:  # noqa: BLE001 (any failure: serving goes on, padded)
            self.capture_error = f"{type(exc).__name__}: {exc}"

    def wait_captures(self, timeout_s: float | None = None) -> bool:
        """Wait for the background captures; whether they are done."""
        if self._background is not None:
            self._background.join(timeout_s)
            return not self._background.is_alive()
        return True

    def close(self, timeout_s: float = 60.0) -> bool:
        """Stop the background captures after the one in progress (the model is being unloaded); whether
        they stopped within ``timeout_s``."""
        self._stop.set()
        return self.wait_captures(timeout_s)

    def _capture(self, batch: int, thread_local: bool = False) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
        """One batch size's graph, its static inputs and output. ``thread_local``: captured while another
        thread serves (CUDA's thread-local capture mode: only this thread's calls are checked)."""
        inputs = self.spec.inputs(batch, self.device, self.dtype)
        if self.device.type != "cuda":
            return None, inputs, self.spec.forward(self.model, inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        # tensors a forward creates without a device (masks, positions) must not be CPU copies in the graph
        copies = CaptureCopies()
        self._kept.append(copies.keep)
        with torch.device(self.device), copies:
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up (cuDNN autotuning, lazy init) outside the graph
                    self.spec.forward(self.model, inputs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            mode = "thread_local" if thread_local else "global"
            with self._replaying, torch.cuda.graph(graph, capture_error_mode=mode):
                out = self.spec.forward(self.model, inputs)
        return graph, inputs, out

    def run_batch(self, batch: int) -> torch.Tensor:
        """Replay (or, on a CPU, run) the captured batch size ``batch`` as it stands; for profiling."""
        graph, inputs, out = self.graphs[batch]
        if graph is None:
            return self.spec.forward(self.model, inputs)
        graph.replay()
        return out

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        parts = [self._chunk(rows[i:i + self.max_batch]) for i in range(0, len(rows), self.max_batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.width), dtype=np.float32)

    def _chunk(self, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        batch = next(b for b in self.sizes if b >= n)
        self.padded_rows += batch - n
        _, inputs, _ = self.graphs[batch]
        with torch.inference_mode():
            shift = self._shift[:n]
            shift.copy_(torch.from_numpy(np.ascontiguousarray(rows.mean(axis=1, dtype=np.float32))))
            x = inputs["x"]
            shift = shift.to(self.device, self.dtype, non_blocking=True).view(n, *(1,) * (x.dim() - 1))
            x[:n].copy_(x[:n] * 0.5 + shift)
            with self._replaying:
                out = self.run_batch(batch)
            flat = out[:n].reshape(n, -1)[:, :self.width].float()
            result = self._result[:n]
            result[:, :flat.shape[1]].copy_(flat, non_blocking=True)
            if self._done is not None:
                self._done.record()
                self._done.synchronize()  # blocks the thread instead of spinning on a CPU core
        return result.numpy().copy()
