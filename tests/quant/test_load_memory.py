"""Quantize-on-load keeps peak memory near the quantized model's size (issue 10: at most 1.3x), on a
checkpoint with E2B's shapes: its widths, its 262144-token vocabulary and per-layer table, two layers.
The load runs in a fresh process, whose peak resident set (VmHWM) is compared with the bytes of the
model it ends up holding."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from gemma4.modeling.random_model import build_random_model
from gemma4.presets import get_preset

LIMIT = 1.3

_CHILD = textwrap.dedent("""
    import json, sys, torch, gemma4
    def rss_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    torch.set_num_threads(2)
    before = rss_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS, so the peak counted is the load's
        f.write("5")
    config = gemma4.QuantizationConfig(weights=sys.argv[2], group_size=32)
    model = gemma4.AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=config, progress=False)
    held = sum(t.nbytes for t in model.state_dict().values())  # the tied head counted once
    held -= model.lm_head.weight.nbytes if model.config.tie_word_embeddings else 0
    print(json.dumps({"peak_growth": (rss_kb("VmHWM:") - before) * 1024, "model_bytes": held}))
""")


@pytest.fixture(scope="module")
def e2b_shaped(tmp_path_factory):
    config = get_preset("gemma-4-E2B", num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                        num_kv_shared_layers=0)
    model = build_random_model(config, dtype=None, seed=3)  # bf16, the released checkpoints' dtype
    path = tmp_path_factory.mktemp("e2b-shaped")
    model.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_quantize_on_load_peak_memory(e2b_shaped, weights):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    out = subprocess.run([sys.executable, "-c", _CHILD, e2b_shaped, weights], capture_output=True, text=True,
                         check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["model_bytes"] > 1e9  # the bf16 tables: 805 MB + 268 MB
    ratio = r["peak_growth"] / r["model_bytes"]
    assert ratio <= LIMIT, f"{weights}: peak RSS growth {r['peak_growth'] / 1e6:.0f} MB is {ratio:.2f}x the " \
                           f"{r['model_bytes'] / 1e6:.0f} MB quantized model"
