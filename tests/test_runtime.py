"""The CPU speed-ups every entry point gets: glibc's heap set when caption is imported, BatchNorm folded into
the encoder's convolutions, and the precision choice (bf16 only when asked; auto is fp32 on a CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from caption.api import Captioner
from caption.errors import ParameterError
from caption.utils import runtime
from tests.conftest import REPO

# In a thread other than the main one (as the web server's and Ray's workers run the model): two
# convolutions over activations larger than glibc's 32 MB mmap threshold, three times; the page faults of the
# third pass.
FAULTS_OF_A_FORWARD_PASS = textwrap.dedent("""
    import resource, threading
    import caption, torch
    from caption.utils.memory import malloc_tuned

    def work():
        conv = torch.nn.Conv2d(32, 32, 3, padding=1)
        images = torch.randn(16, 32, 160, 160)  # 52 MB, and as much for each output
        with torch.inference_mode():
            for _ in range(2):
                conv(conv(images))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            conv(conv(images))
        print(malloc_tuned(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
""")


def faults_of_a_forward_pass(**env: str) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_A_FORWARD_PASS], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    tuned, faults = result.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(sys.platform != "linux", reason="the heap settings are glibc's (Linux)")
def test_a_plain_import_caption_process_reuses_freed_memory_in_every_thread():
    untuned, faults_untuned = faults_of_a_forward_pass(CAPTION_MALLOC_TUNING="0")
    tuned, faults_tuned = faults_of_a_forward_pass()
    assert (untuned, tuned) == ("False", "True")
    activation_pages = (16 * 32 * 160 * 160 * 4) // os.sysconf("SC_PAGE_SIZE")
    assert faults_untuned > activation_pages  # glibc's defaults: each output is mapped and faulted in anew
    assert faults_tuned < activation_pages // 20  # set on import: freed activations are reused as they are


def test_precision_auto_is_fp32_on_a_cpu_and_bf16_only_when_asked(monkeypatch, caplog):
    cpu = torch.device("cpu")
    runtime._warn_emulated_bf16.cache_clear()
    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert runtime.inference_dtype(cpu, "auto") is None
        assert runtime.inference_dtype(cpu, "fp32") is None
        assert runtime.inference_dtype(cpu, "bf16") is torch.bfloat16
    assert "no native bf16" in caplog.text  # said once, for the CPU without it
    with pytest.raises(ParameterError, match="precision .fp16. is not allowed: choose one of auto, fp32"):
        runtime.inference_dtype(cpu, "fp16")
    with pytest.raises(ParameterError, match="precision"):
        Captioner.load("flickr8k-lite0", precision="half")


def test_the_cpu_flags_decide_native_bf16():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    expected = any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))
    assert runtime.cpu_has_native_bf16() is expected


def test_bf16_captions_run_in_bf16_and_fp32_ones_are_the_golden_ones(flickr_splits, flickr_dir):
    expected = json.loads((REPO / "tests" / "data" / "dev32_flickr8k-lite0.json").read_text())["beam3"]
    names = sorted(expected)[:8]
    paths = [str(flickr_dir / "images" / name) for name in names]
    fp32 = Captioner.load("flickr8k-lite0", precision="fp32")
    bf16 = Captioner.load("flickr8k-lite0", precision="bf16")
    assert [r.text for r in fp32.caption(paths, beam_size=3)] == [expected[n]["caption"] for n in names]
    images = torch.stack([fp32.transform.load(p) for p in paths])  # (8, 3, S, S)
    exact, rounded = fp32.encode(images), bf16.encode(images)  # (8, N, C) each, fp32 tensors
    error = float((exact - rounded).norm() / exact.norm())
    assert 0.001 < error < 0.1  # computed in bf16 (8 bits of mantissa): not exact, but close
    assert all(r.ok and r.text for r in bf16.caption(paths, beam_size=3))


def test_folding_batchnorm_keeps_the_features_and_ends_training():
    from caption.models.io import load_model

    model, _, _ = load_model(REPO / "models" / "flickr8k-lite0")
    encoder = model.encoder
    images = torch.randn(2, 3, encoder.cfg.image_size, encoder.cfg.image_size)  # (2, 3, S, S)
    with torch.inference_mode():
        before = encoder(images)  # (2, N, C)
        assert encoder.fold_batchnorm() > 40
        after = encoder(images)  # (2, N, C)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    assert torch.allclose(before, after, atol=1e-4 * float(before.abs().max()))
    with pytest.raises(RuntimeError, match="folded for inference"):
        encoder.train()


def test_a_batchnorm_before_its_convolution_is_not_folded():
    """Module order says conv then BatchNorm, but the data goes the other way: the probe catches it."""
    from caption.models.io import load_model

    class NormFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.norm = nn.BatchNorm2d(3).eval()
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)

        def forward_features(self, x):
            return self.conv(self.norm(x))

    encoder = load_model(REPO / "models" / "flickr8k-lite0")[0].encoder
    encoder.backbone = NormFirst()
    assert encoder.fold_batchnorm() == 0
    assert isinstance(encoder.backbone.norm, nn.BatchNorm2d)
