"""The reference material is all there: counts of every golden family the tests iterate over.

A golden that disappears must make the suite fail, not silently shrink a
parametrization (or turn tests into skips).  Without the reference folder at
all (a clone outside the workspace) these tests skip with a clear message.
"""
from __future__ import annotations

import json

from conftest import reference_path
from golden import golden_index

# what ../shared/reference holds (golden/*/README.md, configs/)
EXPECTED = {
    "layer cases": 116,
    "configs": 23,        # 17 net prototxts + 6 solver files
    "shape records": 23,
    "nets": 3,
    "solver trajectories": 10,
    "data cases": 8,
    "MatWrite files": 9,
}


def test_reference_inventory():
    ref = reference_path()
    counts = {
        "layer cases": len(golden_index("layers")),
        "configs": len(list((ref / "configs").glob("*/*.prototxt"))),
        "shape records": len(list((ref / "golden" / "shapes").glob("*__*.json"))),
        "nets": sum((ref / "golden" / "nets" / f"{n}_reduced.json").is_file() for n in ("embs", "vgg", "res")),
        "solver trajectories": len(golden_index("solver")),
        "data cases": len(golden_index("data")),
        "MatWrite files": len(list((ref / "golden" / "data" / "matwrite").rglob("*.mat"))),
    }
    assert counts == EXPECTED
    for sub in ("layers", "solver", "data"):
        for case, meta in golden_index(sub).items():
            if "file" in meta:
                assert (ref / "golden" / sub / meta["file"]).is_file(), f"{sub}/{case}: {meta['file']} missing"
    summary = json.loads((ref / "golden" / "shapes" / "SUMMARY.json").read_text())
    assert len(summary) == EXPECTED["configs"]


def test_parametrizations_see_every_golden():
    """The test modules' own case lists (built at collection) are complete."""
    reference_path()
    import test_data_layers
    import test_golden_layers
    import test_golden_shapes
    import test_pipeline_eval
    import test_segaware

    assert len(test_golden_layers.CASES) == EXPECTED["layer cases"]
    assert len(test_golden_shapes.CASES) == EXPECTED["shape records"]
    assert len(test_golden_shapes.NET_CASES) == 17
    assert len(test_data_layers.DATA_CASES) == EXPECTED["data cases"] - 1  # matwrite_pipeline: its own test
    assert len(test_segaware._golden_cases()) == 34
    assert len(test_pipeline_eval._scenarios()) == 5 and len(test_pipeline_eval._gen_error_cases()) == 2
