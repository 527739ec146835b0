"""Device profiles: every board the issue names is there, with facts that hold together."""
from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as T

from ggufkit.edge.devices import DEVICES, get_device
from ggufkit.edge.memory import repacked_types

REQUIRED = ["rpi4-4gb", "rpi4-8gb", "rpi5-4gb", "rpi5-8gb", "rpi5-16gb", "orangepi5-8gb",
            "jetson-orin-nano-8gb", "laptop-8gb", "laptop-16gb"]


def test_every_required_board_is_profiled():
    assert set(REQUIRED) <= set(DEVICES)


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_profile_is_consistent(name):
    d = DEVICES[name]
    assert 0 < d.os_reserve_mib < d.ram_mib
    assert 1 <= d.threads <= d.cores
    if d.isa == "aarch64":
        assert "neon" in d.features and "-DGGML_NATIVE=OFF" in d.cmake_args
        # the -march extensions must agree with the features the memory model uses
        assert ("+dotprod" in d.cmake_args) == ("dotprod" in d.features)
    else:
        assert d.isa == "x86_64" and "avx2" in d.features


def test_pi_generations_differ_where_llama_cpp_cares():
    pi4, pi5 = get_device("rpi4-8gb"), get_device("RPi5-8GB")
    assert "dotprod" not in pi4.features and "dotprod" in pi5.features
    assert repacked_types(pi4.features) == {}            # plain NEON: llama.cpp repacks nothing
    assert {T.Q4_0, T.Q4_K, T.Q6_K, T.Q8_0} <= set(repacked_types(pi5.features))
    assert set(repacked_types(get_device("laptop-8gb").features)) == {T.Q4_0, T.Q4_K, T.IQ4_NL}


def test_unknown_device_names_the_known_ones():
    with pytest.raises(ValueError, match="rpi5-8gb"):
        get_device("rpi3")
