"""What a model computes beyond its activation modules, read from the source of its module classes.

Two things no module swap can see:
- GELU functions called in model code: RoBERTa's LM head `gelu(x)`, Whisper's conv stem
  `nn.functional.gelu(...)`. The ReLU model still computes them.
- activations built at call time from a config key: Funnel's discriminator head runs
  `ACT2FN[self.config.hidden_act](x)` in `forward`. With "kgelu" there, every call builds a fresh
  λ-GELU whose θ is never trained or annealed.

"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from dataclasses import dataclass

GELU_CALL = "gelu call"
CALL_TIME_ACTIVATION = "call-time activation"


def is_gelu_name(name: str) -> bool:
    return "gelu" in name.lower()


@dataclass(frozen=True)
class CodeFinding:
    kind: str  # GELU_CALL or CALL_TIME_ACTIVATION
    where: str  # "<Class>.<method>"
    expression: str  # the callee: "nn.functional.gelu", "ACT2FN[self.config.hidden_act]"
    config_key: str | None = None  # the key a call-time activation reads ("hidden_act")


def _gelu_callee(call: ast.Call) -> str | None:
    """The GELU a call computes, if it visibly is one: `gelu(x)`, `F.gelu(x)`, `nn.functional.gelu(x)`,
    `ACT2FN["gelu"](x)`, `get_activation("gelu_new")(x)`. Calls on `self` are submodules: found as modules."""
    func = call.func
    if isinstance(func, (ast.Name, ast.Attribute)) and getattr(func, "id", getattr(func, "attr", ""))[:1].isupper():
        return None  # a class: building a GELU module (nn.GELU(), BloomGelu()), found as a module
    if isinstance(func, ast.Name) and is_gelu_name(func.id):
        return func.id
    if isinstance(func, ast.Attribute) and is_gelu_name(func.attr):
        root = func.value
        while isinstance(root, ast.Attribute):
            root = root.value
        return None if isinstance(root, ast.Name) and root.id == "self" else ast.unparse(func)
    if isinstance(func, ast.Subscript) and isinstance(func.slice, ast.Constant) and is_gelu_name(str(func.slice.value)):
        return ast.unparse(func)
    if isinstance(func, ast.Call) and any(isinstance(a, ast.Constant) and is_gelu_name(str(a.value)) for a in func.args):
        return ast.unparse(func)
    return None


def _config_key_read(node: ast.AST) -> str | None:
    """The config key an expression reads: `self.config.hidden_act` or `config.hidden_act` → "hidden_act"."""
    if isinstance(node, ast.Attribute) and "config" in ast.unparse(node.value).split("."):
        return node.attr
    return None


def _call_time_activation(call: ast.Call) -> tuple[str, str] | None:
    """`ACT2FN[self.config.hidden_act](x)` or `get_activation(config.hidden_act)(x)`: an activation module
    built from a config key at every call. Returns (callee, key)."""
    func = call.func
    if isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name) and func.value.id in ("ACT2FN", "ACT2CLS"):
        key = _config_key_read(func.slice)
    elif isinstance(func, ast.Call) and getattr(func.func, "id", getattr(func.func, "attr", None)) == "get_activation" and func.args:
        key = _config_key_read(func.args[0])
    else:
        return None
    return (ast.unparse(func), key) if key else None


@functools.cache
def _own_findings(klass: type) -> tuple[CodeFinding, ...]:
    """The findings in the methods `klass` itself defines."""
    found = []
    for attr, function in vars(klass).items():
        if not inspect.isfunction(function):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        except (OSError, TypeError, SyntaxError):
            continue
        where = f"{klass.__name__}.{attr}"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if (lookup := _call_time_activation(node)) and attr != "__init__":  # in __init__ it builds a kept module
                found.append(CodeFinding(CALL_TIME_ACTIVATION, where, *lookup))
            elif callee := _gelu_callee(node):
                found.append(CodeFinding(GELU_CALL, where, callee))
    return tuple(dict.fromkeys(found))


def code_findings(cls: type) -> list[CodeFinding]:
    """Findings in a module class and the model code it inherits (not torch's own classes, and not
    GELU module classes, whose GELU is the module itself)."""
    return [
        finding
        for klass in cls.__mro__
        if klass.__module__.split(".")[0] not in ("torch", "builtins") and not is_gelu_name(klass.__name__)
        for finding in _own_findings(klass)
    ]
