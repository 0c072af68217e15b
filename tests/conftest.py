"""Test-wide settings: never touch the network, never send telemetry."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch  # noqa: E402

# Two cores on CI: keep intra-op threads modest so parallel pieces do not thrash.
torch.set_num_threads(min(2, torch.get_num_threads()))
