"""The private PyTorch APIs the project relies on (vaehelpers.torch_private): a PyTorch that renames or removes
one fails here, naming it, rather than somewhere in a training or a speed probe."""

import importlib
from pathlib import Path

import pytest
import torch

from vaehelpers import torch_private


@pytest.mark.parametrize("module, name", torch_private.PRIVATE_APIS, ids=[f"{m}.{n}" for m, n in
                                                                            torch_private.PRIVATE_APIS])
def test_each_private_torch_api_is_still_there(module, name):
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"PyTorch {torch.__version__} has no {module}.{name} ({type(e).__name__}: {e}): "
                    "vaehelpers/torch_private.py needs another way to ask what it answered", pytrace=False)
    assert callable(found), f"{module}.{name} in PyTorch {torch.__version__} is no longer a function"


def test_the_wrappers_answer_in_the_types_the_callers_use():
    assert all(isinstance(f(), bool) for f in (torch_private.cpu_has_avx512_bf16, torch_private.cpu_has_amx_tile,
                                                torch_private.has_triton))
    assert isinstance(torch_private.inductor_default_cache_dir(), str) and torch_private.inductor_default_cache_dir()


def test_no_other_module_calls_a_private_torch_api():
    """Every private API named in PRIVATE_APIS is called from torch_private.py alone."""
    package = Path(torch_private.__file__).parent
    for path in sorted(package.glob("*.py")):
        if path.name == "torch_private.py":
            continue
        text = path.read_text()
        for module, name in torch_private.PRIVATE_APIS:
            assert f"{module}.{name}" not in text and f"from {module} import" not in text, \
                f"{path.name} calls {module}.{name}: call it through vaehelpers.torch_private"


def _private_torch_uses(source: str) -> list[str]:
    """The private parts of PyTorch a module's code reaches: ``torch(.x)*._y`` attributes, and imports from a
    ``torch`` module with a ``_`` part (``from torch.utils._triton import ...``), however torch was imported."""
    import ast

    tree, found = ast.parse(source), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "torch":
                found.append(".".join(["torch", *reversed(chain)]))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"{node.module}: {', '.join(a.name for a in node.names)}"] if any(
                p.startswith("_") and not p.startswith("__") for p in parts) else []
    return found


def test_no_other_module_reaches_a_private_part_of_torch():
    package = Path(torch_private.__file__).parent
    reached = {p.name: uses for p in sorted(package.glob("*.py")) if p.name != "torch_private.py"
               and (uses := _private_torch_uses(p.read_text()))}
    assert not reached, f"call these through vaehelpers.torch_private: {reached}"
    assert sorted(_private_torch_uses("import torch\ntorch.cpu._is_x()\nfrom torch._inductor import y\n")) == [
        "torch._inductor: y", "torch.cpu._is_x"]  # the check finds both forms
