import importlib.util
import json

from so8t_core.config import REPO_ROOT

spec = importlib.util.spec_from_file_location("compare_verdicts", REPO_ROOT / "scripts" / "compare_verdicts.py")
cv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cv)


def write_run(root, stages):
    for stage, metrics in stages.items():
        (root / stage).mkdir(parents=True)
        (root / stage / "metrics.json").write_text(json.dumps(metrics))
    return root


def test_a_flipped_yes_no_is_a_difference_a_number_within_tolerance_is_not(tmp_path):
    base = {"verdicts": ["beats", "gap", "word"], "beats": True, "gap": 0.1234567, "word": "tfidf", "other": 1}
    a = write_run(tmp_path / "a", {"06_x": base})
    b = write_run(tmp_path / "b", {"06_x": base | {"gap": 0.12345670001, "other": 2}})
    assert cv.compare(a, b)["flips"] == 0  # "other" is no verdict; the gap moved below rtol
    c = write_run(tmp_path / "c", {"06_x": base | {"beats": False}})
    res = cv.compare(a, c)
    assert res["flips"] == 1
    assert [r[1] for r in res["rows"] if not r[4]] == ["beats"]
    assert cv.main([str(a), str(b)]) == 0
    assert cv.main([str(a), str(c)]) == 1


def test_a_stage_in_one_run_only_fails_the_comparison(tmp_path):
    a = write_run(tmp_path / "a", {"06_x": {"verdicts": ["v"], "v": True}, "07_y": {"verdicts": []}})
    b = write_run(tmp_path / "b", {"06_x": {"verdicts": ["v"], "v": True}})
    assert cv.compare(a, b)["missing"] == ["07_y"]
    assert cv.main([str(a), str(b)]) == 1
