"""The seq2seq teacher published as a model directory with its card (`make teacher-s2s`)."""

from __future__ import annotations

import json

from tests.s2s_fixtures import write_pairs, write_s2s_recipe


def test_publish_writes_a_float16_model_directory_with_its_card_and_record(tmp_path):
    from safetensors import safe_open

    from compress.tasks.seq2seq.model import load_seq2seq
    from compress.tasks.seq2seq.publish import main

    data = write_pairs(tmp_path / "data", dev=12, test=12)
    int8 = {"name": "teacher-int8", "source": "teacher", "max_chrf_drop": None}
    recipe = write_s2s_recipe(tmp_path / "r.yaml", data, distill=[], quantize=[int8])
    out = tmp_path / "models" / "tiny-t5"
    assert main([str(recipe), str(out), "--run", str(tmp_path / "run")]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    record = json.loads((out / "training.json").read_text())
    assert set(record["corpus"]) == {"train", "dev", "test"} and len(record["corpus"]["train"]["sha256"]) == 64
    for scores in (record["chrf_float32"], record["chrf_stored"]):
        assert set(scores) == {"holdout", "dev", "test"}
        assert all(0 <= s["chrf"] <= 100 for s in scores.values())
    # float16 storage changes a tiny model's greedy outputs little, if at all
    assert abs(record["chrf_stored"]["dev"]["chrf"] - record["chrf_float32"]["dev"]["chrf"]) < 5
    assert record["loss_curve"] and record["teacher_step"]["wall_s"] > 0
    card = (out / "README.md").read_text()
    assert "float16" in card and record["corpus"]["train"]["sha256"] in card
    model, _ = load_seq2seq(out, "the published teacher")
    assert model.config.model_type == "t5"


def test_publish_refuses_a_users_model(tmp_path, capsys):
    from compress.tasks.seq2seq.publish import main
    from tests.s2s_fixtures import make_user_model

    data = write_pairs(tmp_path / "data", train=40, dev=4, test=4)
    user = make_user_model("t5", tmp_path / "user")
    recipe = write_s2s_recipe(tmp_path / "r.yaml", data, teacher={"path": str(user)})
    assert main([str(recipe), str(tmp_path / "out")]) == 2
    assert "teacher.path is set; publish trains a teacher" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
