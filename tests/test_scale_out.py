"""Scale-out: notebook 03's main run under `accelerate launch` (2 gloo processes on the CPU) trains the same soul and
LoRA weights as one process with the same effective batch, resumes to the uninterrupted result, and the GPU
profile names only parameters its notebooks declare."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from so8t_core.config import PARAMS_DIR
from so8t_core.lm import train_soul

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
# A short run with a non-trivial gate: the rotation starts away from the identity and alpha anneals within it.
RUN = [
    "--steps", "6", "--batch_size", "4", "--seq_len", "32", "--eval_docs", "4", "--lora_r", "4", "--lora_alpha", "8",
    "--init_std", "0.2", "--alpha_warmup", "1", "--alpha_anneal", "4", "--pet_warmup", "1", "--pet_main", "3",
    "--pet_anneal", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def stage00(tiny_lm, tmp_path_factory) -> Path:
    """A notebook-00 stage folder: a generated corpus and a tiny Phi-3 recorded as the base model."""
    from so8t_core.data.corpus import build_corpus
    from so8t_core.lm.loading import write_model_ref

    d = tmp_path_factory.mktemp("stage00")
    corpus = build_corpus(seed=0, n_docs=60, heldout_fraction=0.1)
    corpus.save(d / "corpus")
    write_model_ref(d, str(tiny_lm(corpus.train, vocab_size=2000).dir))
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(*args: str, processes: int = 2) -> dict:
    """``accelerate launch --multi_gpu --num_processes N -m so8t_core.lm.train_soul ...`` on the CPU; the result row.

    ``--multi_gpu`` makes accelerate start one process per rank (torchrun); ``ACCELERATE_USE_CPU=1`` makes them a
    gloo group on the CPU (``--cpu`` alone starts one process). The explicit flags keep a user's accelerate
    config file out of the test.
    """
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += ["-m", "so8t_core.lm.train_soul", *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def trained(out: Path) -> dict[str, torch.Tensor]:
    """The soul's and the LoRA adapter's tensors as saved in ``out/soul`` (standard formats)."""
    soul = load_file(out / "soul" / "soul.safetensors")
    lora = load_file(out / "soul" / "adapter_model.safetensors")
    assert lora
    assert {"r_cmd.generators", "r_safe.generators"} <= set(soul)
    return {**soul, **{f"lora.{k}": v for k, v in lora.items()}}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(("processes", "grad_accum"), [(1, 3), (2, 1), (2, 2), (3, 2)])
def test_each_process_reads_its_share_of_the_micro_batches_of_one_process(processes, grad_accum):
    from accelerate.data_loader import BatchSamplerShard

    from so8t_core.lm.distributed import MicroBatches, micro_indices

    def shard(rank: int) -> list[list[int]]:
        sampler = MicroBatches(50, 7, 3, 6, grad_accum * processes, 4)
        return list(BatchSamplerShard(sampler, processes, rank)) if processes > 1 else list(sampler)

    one = list(MicroBatches(50, 7, 3, 6, grad_accum * processes, 4))  # one process, grad_accum * processes
    assert one == [micro_indices(50, 7, s, m, 4).tolist() for s in range(3, 6) for m in range(grad_accum * processes)]
    for rank in range(processes):
        got = shard(rank)
        assert len(got) == 3 * grad_accum  # steps 3, 4, 5
        for k, batch in enumerate(got):  # local micro-batch i of step s is micro-batch i * processes + rank
            s, i = 3 + k // grad_accum, k % grad_accum
            assert batch == micro_indices(50, 7, s, i * processes + rank, 4).tolist()


def test_a_launch_whose_processes_did_not_form_a_group_is_refused(monkeypatch):
    from so8t_core.lm.distributed import make_accelerator

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; this process is not in a process group
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2.*ACCELERATE_USE_CPU=1"):
        make_accelerator(1, find_unused_parameters=False)


def test_several_processes_move_a_plain_model_and_refuse_a_quantized_one_elsewhere():
    from types import SimpleNamespace

    from so8t_core.lm.distributed import place

    acc = SimpleNamespace(num_processes=2, device=torch.device("meta"), local_process_index=1)  # "this GPU"
    plain = torch.nn.Linear(2, 2)
    place(plain, acc)
    assert plain.weight.device.type == "meta"
    quantized = torch.nn.Linear(2, 2)
    quantized.is_loaded_in_4bit = True  # as transformers marks a bitsandbytes model, which cannot be moved
    with pytest.raises(ValueError, match=r"device_map=\{'': 1\}"):
        place(quantized, acc)
    alone = torch.nn.Linear(2, 2)
    place(alone, SimpleNamespace(num_processes=1, device=torch.device("meta")))
    assert alone.weight.device.type == "cpu"  # one process: the model stays where it was loaded


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_with_the_same_effective_batch(stage00, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # Dropout draws from each process's own generator, so only dropout 0 makes the two runs comparable.
    common = ["--stage00", str(stage00), *RUN, "--lora_dropout", "0"]
    assert train_soul.main([*common, "--grad_accum", "2", "--out", str(one)]) == 0
    row = launch(*common, "--grad_accum", "1", "--out", str(two))
    assert row["num_processes"] == 2
    assert row["distributed_type"] == "MULTI_CPU"
    assert row["effective_batch"] == 8
    first = json.loads((one / "result.json").read_text(encoding="utf-8"))
    assert first["num_processes"] == 1
    assert first["effective_batch"] == 8
    moved = trained(one)["lora.base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight"].abs().max()
    assert moved > 1e-3  # the comparison is between weights that training actually changed
    assert max_abs_diff(trained(one), trained(two)) < 1e-5
    timeline = [json.loads(x) for x in (one / "main_run" / "timeline.jsonl").read_text().splitlines()]
    timeline2 = [json.loads(x) for x in (two / "main_run" / "timeline.jsonl").read_text().splitlines()]
    assert [r["lm_loss"] for r in timeline2] == pytest.approx([r["lm_loss"] for r in timeline], abs=1e-5)


@pytest.mark.slow
def test_two_processes_resume_to_the_uninterrupted_run(stage00, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # Dropout on: each process must get its own generator state back from the checkpoint.
    common = ["--stage00", str(stage00), *RUN, "--lora_dropout", "0.1", "--checkpoint_every", "3"]
    launch(*common, "--keep-checkpoints", "2", "--out", str(full))
    # What a run that died after step 5 leaves: the checkpoint of step 3 and a timeline that goes past it.
    shutil.copytree(full / "main_run", resumed / "main_run")
    shutil.rmtree(resumed / "main_run" / "checkpoints" / "step_000006")
    state = torch.load(resumed / "main_run" / "checkpoints" / "step_000003" / "trainer_state.pt", weights_only=True)
    assert state["rng"].shape[0] == 2
    assert not torch.equal(state["rng"][0], state["rng"][1])
    row = launch(*common, "--resume", "--out", str(resumed))
    assert row["num_processes"] == 2
    assert max_abs_diff(trained(full), trained(resumed)) < 1e-6
    steps = [json.loads(x)["step"] for x in (resumed / "main_run" / "timeline.jsonl").read_text().splitlines()]
    assert steps == list(range(6))


def test_gpu_profile_names_only_declared_parameters_with_valid_values():
    from so8t_core import config, pipeline

    planned = {stage: params for stage, _, params in pipeline.plan("gpu")}  # raises on an undeclared name
    profile = yaml.safe_load((PARAMS_DIR / "gpu.yaml").read_text(encoding="utf-8"))
    classes = {
        "00_base_model": config.BaseModelConfig,
        "01_so8_rotation_math": config.RotationMathConfig,
        "02_alpha_annealing": config.AlphaStageConfig,
        "03_soul_injection": config.SoulStageConfig,
        "04_fusion_and_gguf": config.FusionStageConfig,
        "05_visual_adapter": config.VisualStageConfig,
        "06_safety_eval": config.SafetyEvalStageConfig,
        "07_quad_reinforcement": config.QuadRLStageConfig,
    }
    assert set(profile) <= set(classes)
    for stage, overrides in profile.items():
        assert planned[stage] == overrides
        cls = classes[stage]
        cls.from_dict({**asdict(cls()), **overrides})  # __post_init__ refuses a bad value by name
    base, soul = profile["00_base_model"], profile["03_soul_injection"]
    assert base["base_model"] == "microsoft/Phi-3.5-mini-instruct"
    assert base["load_in_4bit"] is True
    assert soul["grad_checkpointing"] is True
    assert soul["grad_accum"] > 1


def test_a_checkpoint_resumes_only_with_the_number_of_processes_that_wrote_it(stage00, tmp_path):
    args = ["--stage00", str(stage00), *RUN, "--checkpoint_every", "3", "--out", str(tmp_path)]
    assert train_soul.main([*args, "--steps", "3"]) == 0
    meta_file = tmp_path / "main_run" / "checkpoints" / "step_000003" / "trainer.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    assert meta["num_processes"] == 1
    meta_file.write_text(json.dumps({**meta, "num_processes": 2}), encoding="utf-8")  # as a 2-process run writes it
    with pytest.raises(ValueError, match=r"num_processes \(2 then, 1 now\)"):
        train_soul.main([*args, "--resume"])
