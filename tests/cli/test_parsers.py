"""The one parser for devices and dtypes (gemma4.devices) and the one argparse number validator
(gemma4.cli_common.number), which every entry point shares."""
from __future__ import annotations

import argparse

import pytest
import torch

from gemma4.cli_common import number
from gemma4.devices import available_memory, parse_device, parse_dtype


@pytest.mark.parametrize("text, want", [("bfloat16", torch.bfloat16), ("torch.float16", torch.float16),
                                        ("bf16", torch.bfloat16), ("fp32", torch.float32),
                                        (torch.float64, torch.float64)])
def test_parse_dtype_names(text, want):
    assert parse_dtype(text) is want


def test_parse_dtype_auto_and_refusals():
    assert parse_dtype("auto") is None and parse_dtype(None, auto=torch.bfloat16) is torch.bfloat16
    for bad in ("float8_e4m3fn", "int8", "banana"):
        with pytest.raises(ValueError, match=rf"--dtype='{bad}'"):
            parse_dtype(bad, "--dtype")
    with pytest.raises(ValueError, match="dtype=torch.int32"):
        parse_dtype(torch.int32)
    with pytest.raises(TypeError, match="dtype"):
        parse_dtype(3.5)


def test_parse_device():
    assert parse_device(None) == torch.device("cpu")
    assert parse_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device_map='nowhere'"):
        parse_device("nowhere", "device_map")
    with pytest.raises(ValueError, match="gemma4 runs on cpu or cuda"):
        parse_device("mps")
    with pytest.raises(ValueError, match="cuda:99"):
        parse_device("cuda:99")


def test_available_memory_is_a_positive_count():
    free = available_memory(torch.device("cpu"))
    assert free is None or free > 0


@pytest.mark.parametrize("make, good, bad", [
    (lambda: number(int, 1, 10), {"1": 1, "10": 10}, ["0", "11", "1.5", "1e3", "x", ""]),
    (lambda: number(float, 0.0), {"0": 0.0, "2.5": 2.5}, ["-0.1", "nan", "inf", "x"]),
    (lambda: number(float, 0.0, 1.0, low_open=True), {"1": 1.0, "0.25": 0.25}, ["0", "1.01"]),
    (lambda: number(int, 0, 2**64 - 1), {str(2**64 - 1): 2**64 - 1}, [str(2**64), "-1"]),
])
def test_number_validator(make, good, bad):
    parse = make()
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace("[", r"\[")):
            parse(text)
