"""``benchmarks/step_profile.py``: an ``op_name`` read as direction, part and stage; compiled HLO's instructions mapped
to their op names; a real (CPU) profile's events named by instructions of the program it ran; the report's sums;
the script restarting itself with XLA's command buffers off."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import step_profile
from benchmarks.step_profile import attribute, breakdown, device_events, op_names

FORWARD = "jit(step)/jvp(MemoryMamba)/stage2_block4/ss2d/in_proj/dot_general"
BACKWARD = "jit(step)/transpose(jvp(MemoryMamba))/stage0_block1/ss2d/selective_scan/pallas_call"
HLO = f'''
ENTRY %main.12 (p0: f32[8]) -> f32[] {{
  %fusion.3 = f32[8]{{0}} fusion(%p0), kind=kLoop, calls=%fc.3, metadata={{op_name="{FORWARD}" source_line=3}}
  ROOT %custom-call.7 = f32[] custom-call(%fusion.3), custom_call_target="t", metadata={{op_name="{BACKWARD}"}}
  %copy.1 = f32[8]{{0}} copy(%p0)
}}
'''


def test_an_op_name_reads_as_direction_part_and_stage():
    assert attribute("jit(step)/jvp(MemoryMamba)/stage2_block4/ss2d/in_proj/dot_general") == (
        "forward", "block/ss2d/in_proj/dot_general", "stage2")
    assert attribute("jit(step)/transpose(jvp(MemoryMamba))/stage0_block1/fusion/mul") == (
        "backward", "block/fusion/mul", "stage0")
    assert attribute("jit(step)/transpose(jvp(MemoryMamba))/stage3_downsample/_pad") == (
        "backward", "stage3_downsample/_pad", "-")
    assert attribute("jit(step)/mul;jit(step)") == ("forward", "mul", "-")  # the optimizer: outside the model


MAMBAAD = "jit(step)/jvp(MambaAD)"
MAMBAAD_OP_NAMES = [  # (op_name, (direction, part, stage)): by decoder stage, block indices dropped
    ("jit(step)/transpose(jvp(MambaAD))/decoder/layers_up_2_blocks_1/smm_blocks_0/self_attention/pallas_call",
     ("backward", "decoder/lss/hss/self_attention/pallas_call", "layers_up_2")),
    (f"{MAMBAAD}/decoder/layers_up_3_upsample/expand/dot_general",
     ("forward", "decoder/upsample/expand/dot_general", "layers_up_3")),
    (f"{MAMBAAD}/encoder/layer3_5/conv2/conv_general_dilated",
     ("forward", "encoder/block/conv2/conv_general_dilated", "layer3")),
    (f"{MAMBAAD}/bottleneck/bn_layer_0/conv1/conv_general_dilated",
     ("forward", "bottleneck/bn_layer_0/conv1/conv_general_dilated", "-")),
]


@pytest.mark.parametrize("op_name,expected", MAMBAAD_OP_NAMES)
def test_mambaad_op_names_read_by_decoder_stage_with_block_indices_dropped(op_name, expected):
    assert attribute(op_name) == expected


def test_compiled_instructions_map_to_their_op_names():
    assert op_names(HLO) == {"fusion.3": FORWARD, "custom-call.7": BACKWARD}


def test_breakdown_sums_each_part_per_step_and_keeps_unnamed_instructions():
    events = [("fusion.3", 30.0), ("custom-call.7", 50.0), ("fusion.3", 10.0), ("copy.1", 10.0)]
    report = breakdown(events, op_names(HLO), steps=2, top=5)
    lines = report.splitlines()
    assert "        25   50.0%  backward block/ss2d/selective_scan/pallas_call" in lines
    assert "        20   40.0%  forward  block/ss2d/in_proj/dot_general" in lines
    assert "         5   10.0%  (no op_name: copy)" in lines
    assert "        25   50.0%  backward stage0" in lines


def test_a_profile_names_the_instructions_of_the_program_it_ran(tmp_path):
    step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0))
    x = jnp.ones((64, 64))
    compiled = step.lower(x).compile()
    compiled(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        compiled(x).block_until_ready()
    (path,) = tmp_path.glob("**/*.xplane.pb")
    events = device_events(jax.profiler.ProfileData.from_file(str(path)))
    instructions = set(op_names(compiled.as_text()))
    ran = {hlo_op for hlo_op, _ in events}
    assert ran & instructions, (ran, instructions)
    assert all(us >= 0 for _, us in events)


@pytest.mark.parametrize("flags,keep,restarts", [("--xla_cpu_enable_fast_math=false", False, True),
                                                 ("", True, False),
                                                 ("--xla_gpu_enable_command_buffer=FUSION", False, False)])
def test_the_script_restarts_with_command_buffers_off_unless_told_otherwise(monkeypatch, flags, keep, restarts):
    calls = []
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setattr(step_profile.os, "execve", lambda path, argv, env: calls.append(env["XLA_FLAGS"]))
    step_profile.rerun_without_command_buffers(keep)
    assert calls == ([f"{flags} --xla_gpu_enable_command_buffer=".strip()] if restarts else [])
