"""``import tilesam.<module>`` loads no torch (~600 MB, seconds), except in the modules that run models.

Planning the workflow, listing models, fetching data and writing tables import the package many
times per run; only model jobs need torch. Each module is imported in a fresh interpreter. The
module list is the package itself, so a new module is checked unless it is added below, with why.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tilesam

#: Modules that run (or define) models and so may import torch at the top, each with the reason.
#: ``name.*`` allows a package and everything in it.
MAY_IMPORT_TORCH = {
    "tilesam.models.load": "builds SAM and loads checkpoints into it",
    "tilesam.models.checkpoints": "reads checkpoint files (torch.load)",
    "tilesam.models.tiny_vit": "the TinyViT image encoder, an nn.Module",
    "tilesam.models.vit_attention": "SAM's ViT attention, an nn.Module",
    "tilesam.models.unetr": "the instance-segmentation decoder, an nn.Module",
    "tilesam.models.unetr_tail": "the decoder's full-resolution layers at inference",
    "tilesam.embed": "runs the image encoder",
    "tilesam.interactive.decoder": "runs SAM's prompt encoder and mask decoder",
    "tilesam.segment.amg": "decodes point-grid prompts with SAM's mask decoder",
    "tilesam.segment.decoder": "the batched mask decoder of AMG",
    "tilesam.segment.two_way": "SAM's mask decoder arranged for many prompts",
    "tilesam.segment.upscale": "upscales SAM's torch mask logits",
    "tilesam.segment.masks": "mask sets are torch tensors on the model's device",
    "tilesam.segment.labels": "paints the kept torch masks into a label image",
    "tilesam.segment.box_amg": "decodes box-grid prompts with SAM's mask decoder",
    "tilesam.segment.blocks": "runs AMG over the tiles of a block",
    "tilesam.segment.search": "decodes the AMG candidates of the threshold search",
    "tilesam.segment.apg": "decodes the prompts it derives with SAM's mask decoder",
    "tilesam.segment.nms": "NMS over the torch masks of APG, as micro-sam computes it",
    "tilesam.finetune.*": "trains SAM",
}

SRC = Path(tilesam.__file__).resolve().parents[1]


def _modules() -> list[str]:
    return ["tilesam", *sorted(m.name for m in pkgutil.walk_packages(tilesam.__path__, "tilesam."))]


def _allowed(module: str) -> bool:
    return any(
        module == entry or (entry.endswith(".*") and (module == entry[:-2] or module.startswith(entry[:-1])))
        for entry in MAY_IMPORT_TORCH
    )


def _imports_torch(module: str) -> bool:
    """Whether a fresh interpreter has torch loaded after ``import module`` (of this checkout's tilesam)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr}"
    return done.stdout.strip() == "True"


@pytest.mark.parametrize("module", [m for m in _modules() if not _allowed(m)])
def test_import_does_not_load_torch(module):
    assert not _imports_torch(module), (
        f"import {module} loads torch: import it inside the function that runs a model (type hints under "
        f"TYPE_CHECKING), or add {module} to MAY_IMPORT_TORCH with the reason"
    )


def test_the_check_sees_torch():
    assert _imports_torch("tilesam.models.load")


def test_allowed_modules_exist():
    modules = _modules()
    for entry in MAY_IMPORT_TORCH:
        name = entry.removesuffix(".*")
        assert name in modules, f"MAY_IMPORT_TORCH names {entry}, which is no module of tilesam"


#: Jobs that only read stores and write labels, scores, tables or figures: they start without torch.
TORCH_FREE_JOBS = ("import_image", "import_labels", "stitch", "evaluate", "benchmark", "figure", "classical_segment")


@pytest.mark.parametrize("job", TORCH_FREE_JOBS)
def test_jobs_that_run_no_model_import_no_torch_module(job):
    """The modules a job function imports inside its body (the jobs import lazily) are torch-free ones."""
    import ast
    import inspect

    from tilesam.jobs import JOBS

    (source,) = {inspect.getsourcefile(f) for name, f in JOBS.items() if f.__name__ == job}
    tree = ast.parse(Path(source).read_text())
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == job]
    imported = {n.module for n in ast.walk(function) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(function) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m == "torch" or m.startswith("torch.") or _allowed(m)], imported
