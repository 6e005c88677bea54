"""Small AST mutations of one function, applied as minimal text edits (SWE-smith style bugs).

Why text edits: ``ast.unparse`` of a whole file rewrites its formatting, so the diff (and the gold patch that
reverses it) would touch every line. Here the AST only *finds* a site; the edit replaces the few characters of
that site in the original text (an operator token, a constant, one argument span, whole lines of a branch),
so the diff is one or two lines and reads like a real bug.

Kinds (``Mutation.kind``): ``flip_comparison`` (``<`` -> ``<=``, ``==`` -> ``!=``, ``in`` -> ``not in`` ...),
``change_operator`` (``+`` <-> ``-``, ``*`` <-> ``//`` ...), ``swap_boolean`` (``and`` <-> ``or``),
``drop_not``, ``off_by_one_constant`` (integer constant +-1), ``off_by_one_slice`` (slice bound +-1),
``swap_arguments`` (first two positional arguments of a call), ``drop_branch`` (an ``if`` without ``else``
removed), ``negate_condition`` (``if c`` -> ``if not (c)``), ``drop_return`` (``return x`` -> ``return None``).

Example::

    >>> source = "def last(xs):\\n    return xs[len(xs) - 1]\\n"
    >>> [m.describe() for m in find_mutations(source, "m.py")]  # doctest: +NORMALIZE_WHITESPACE
    ['drop_return in last (m.py:2): `xs[len(xs) - 1]` -> `None`',
     'change_operator in last (m.py:2): `-` -> `+`', 'off_by_one_constant in last (m.py:2): `1` -> `2`']
    >>> find_mutations(source, "m.py")[1].apply(source)
    'def last(xs):\\n    return xs[len(xs) + 1]\\n'
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

from lightswe.envs.hack_check import parse_python
from lightswe.errors import UserInputError

KINDS = ("flip_comparison", "change_operator", "swap_boolean", "drop_not", "off_by_one_constant",
         "off_by_one_slice", "swap_arguments", "drop_branch", "negate_condition", "drop_return")

_COMPARE = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
            ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"),
            ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"), ast.NotIn: ("not in", "in")}
_BINOP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "//"), ast.FloorDiv: ("//", "*"),
          ast.Div: ("/", "*"), ast.Mod: ("%", "//"), ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&"),
          ast.LShift: ("<<", ">>"), ast.RShift: (">>", "<<")}


@dataclass(kw_only=True, slots=True, frozen=True)
class Mutation:
    """One edit: replace ``source[start:end]`` (character offsets) with ``new``."""

    path: str  # file, relative to the repository root
    function: str  # qualified name inside the module: "func", "Class.method"
    kind: str
    line: int  # 1-based line of the edit (for reports and de-duplication)
    start: int
    end: int
    old: str
    new: str

    def apply(self, source: str) -> str:
        if source[self.start:self.end] != self.old:
            raise UserInputError(f"{self.path}:{self.line}: expected {self.old!r} at the mutation site, the file "
                             "changed since the mutation was found; find mutations again on the current text")
        return source[:self.start] + self.new + source[self.end:]

    def describe(self) -> str:
        old, new = (s if len(s) < 40 else s[:37] + "..." for s in (self.old.strip(), self.new.strip()))
        return f"{self.kind} in {self.function} ({self.path}:{self.line}): `{old}` -> `{new}`"

    @property
    def key(self) -> str:
        """Stable id of the site and edit (for instance ids and resume)."""
        return f"{self.path}:{self.function}:{self.kind}:{self.start}:{self.new}"


class _Offsets:
    """(line, byte column) from the AST -> character offset in the text."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def __call__(self, lineno: int, col_bytes: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col_bytes].decode("utf-8", errors="replace"))


def _docstring_node(body: list[ast.stmt]) -> ast.stmt | None:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0]
    return None


def _functions(tree: ast.Module):
    """Yield (qualified name, FunctionDef) for module functions and methods of top-level classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{item.name}", item


def _token_between(source: str, start: int, end: int, token: str) -> tuple[int, int] | None:
    """Offsets of the operator ``token`` in ``source[start:end]`` outside brackets, strings and comments."""
    segment = source[start:end]
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(segment).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    line_starts = [0]
    for line in segment.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    depth, words = 0, token.split()
    significant = [t for t in tokens if t.type in (tokenize.OP, tokenize.NAME)]
    for i, tok in enumerate(significant):
        if tok.string in "([{":
            depth += 1
        elif tok.string in ")]}":
            depth -= 1
        elif depth == 0 and [t.string for t in significant[i:i + len(words)]] == words:
            last = significant[i + len(words) - 1]
            a = start + line_starts[tok.start[0] - 1] + tok.start[1]
            b = start + line_starts[last.end[0] - 1] + last.end[1]
            return a, b
    return None


class _Finder:
    def __init__(self, source: str, path: str) -> None:
        self.source, self.path = source, path
        self.offset = _Offsets(source)
        self.found: list[Mutation] = []
        self.function = ""

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def add(self, kind: str, line: int, start: int, end: int, new: str) -> None:
        old = self.source[start:end]
        if old != new:
            self.found.append(Mutation(path=self.path, function=self.function, kind=kind, line=line,
                                       start=start, end=end, old=old, new=new))

    def text(self, node: ast.AST) -> str:
        a, b = self.span(node)
        return self.source[a:b]

    # --------------------------------------------------------------------------------------- the sites
    def visit_function(self, name: str, func: ast.FunctionDef) -> None:
        self.function = name
        doc = _docstring_node(func.body)
        for stmt in func.body:
            if stmt is doc:
                continue
            for node in ast.walk(stmt):
                method = getattr(self, f"site_{type(node).__name__}", None)
                if method is not None:
                    method(node)
        self.block(func.body)

    def site_Compare(self, node: ast.Compare) -> None:
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            old, new = _COMPARE.get(type(op), (None, None))
            if old:
                where = _token_between(self.source, self.span(left)[1], self.span(right)[0], old)
                if where:
                    self.add("flip_comparison", node.lineno, *where, new)
            left = right

    def site_BinOp(self, node: ast.BinOp) -> None:
        old, new = _BINOP.get(type(node.op), (None, None))
        if old and not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)
                        and isinstance(node.left.value, str)):  # "%s" % x is formatting, not arithmetic
            where = _token_between(self.source, self.span(node.left)[1], self.span(node.right)[0], old)
            if where:
                self.add("change_operator", node.lineno, *where, new)

    def site_AugAssign(self, node: ast.AugAssign) -> None:
        old, new = _BINOP.get(type(node.op), (None, None))
        if old:
            where = _token_between(self.source, self.span(node.target)[1], self.span(node.value)[0], old + "=")
            if where:
                self.add("change_operator", node.lineno, *where, new + "=")

    def site_BoolOp(self, node: ast.BoolOp) -> None:
        old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        where = _token_between(self.source, self.span(node.values[0])[1], self.span(node.values[1])[0], old)
        if where:
            self.add("swap_boolean", node.lineno, *where, new)

    def site_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            start, end = self.span(node)
            self.add("drop_not", node.lineno, start, end, self.text(node.operand))

    def site_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1000:
            start, end = self.span(node)
            if self.source[start:end].isdigit():
                self.add("off_by_one_constant", node.lineno, start, end, str(value + 1))

    def site_Slice(self, node: ast.Slice) -> None:
        for bound in (node.lower, node.upper):
            if bound is None:
                continue
            start, end = self.span(bound)
            if isinstance(bound, ast.Constant) and isinstance(bound.value, int) and not isinstance(bound.value, bool):
                self.add("off_by_one_slice", bound.lineno, start, end, str(bound.value + 1))
            elif isinstance(bound, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)):
                self.add("off_by_one_slice", bound.lineno, start, end, f"{self.source[start:end]} + 1")
            elif isinstance(bound, ast.UnaryOp) and isinstance(bound.op, ast.USub) \
                    and isinstance(bound.operand, ast.Constant) and isinstance(bound.operand.value, int):
                self.add("off_by_one_slice", bound.lineno, start, end, str(-bound.operand.value - 1))

    def site_Call(self, node: ast.Call) -> None:
        args = node.args
        if len(args) >= 2 and not any(isinstance(a, ast.Starred) for a in args[:2]):
            first, second = self.text(args[0]), self.text(args[1])
            if first != second and "\n" not in first + second:
                a0, _ = self.span(args[0])
                _, b1 = self.span(args[1])
                between = self.source[self.span(args[0])[1]:self.span(args[1])[0]]
                self.add("swap_arguments", node.lineno, a0, b1, second + between + first)

    def site_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not):
            return  # `not (not x)` reads like a machine's edit; drop_not covers this site
        start, end = self.span(node.test)
        self.add("negate_condition", node.lineno, start, end, f"not ({self.source[start:end]})")

    def site_Return(self, node: ast.Return) -> None:
        value = node.value
        if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
            start, end = self.span(value)
            self.add("drop_return", node.lineno, start, end, "None")

    def block(self, body: list[ast.stmt]) -> None:
        """``drop_branch``: remove whole lines of an ``if`` without ``else`` (a guard or a special case)."""
        for stmt in body:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(stmt, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    self.block(inner)
                elif isinstance(inner, list):
                    for handler in inner:
                        if isinstance(handler, ast.ExceptHandler):
                            self.block(handler.body)
            if not (isinstance(stmt, ast.If) and not stmt.orelse and len(body) > 1):
                continue
            first, last = stmt.lineno, stmt.end_lineno
            lines = self.offset.lines
            if not lines[first - 1][:stmt.col_offset].strip() == "" or last >= len(lines) + 1:
                continue
            tail = lines[last - 1].encode("utf-8")[stmt.end_col_offset:].decode("utf-8", "replace").strip()
            if tail and not tail.startswith("#"):
                continue
            start, end = self.offset.starts[first - 1], self.offset.starts[last]
            self.add("drop_branch", stmt.lineno, start, end, "")


def find_mutations(source: str, path: str, *, functions: set[str] | None = None) -> list[Mutation]:
    """Every mutation site of every function (or of ``functions``) in ``source``, each re-parsed to be valid.

    The list is in source order; a caller samples from it. Sites in docstrings, decorators and default
    values are skipped (they rarely make a bug a test can see).
    """
    try:
        tree = parse_python(source)
    except SyntaxError as err:
        raise UserInputError(f"{path}: not valid Python ({err}); mutations need a parsable module") from None
    finder = _Finder(source, path)
    for name, func in _functions(tree):
        if functions is None or name in functions:
            finder.visit_function(name, func)
    valid, seen = [], set()
    for mutation in sorted(finder.found, key=lambda m: (m.start, -m.end)):
        if mutation.key in seen:
            continue
        seen.add(mutation.key)
        try:
            parse_python(mutation.apply(source))
        except SyntaxError:
            continue
        valid.append(mutation)
    return valid


def function_lines(source: str) -> dict[str, tuple[int, int]]:
    """Qualified function name -> (first line, last line), decorators excluded."""
    return {name: (func.lineno, func.end_lineno) for name, func in _functions(parse_python(source))}


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def public_name(function: str) -> str:
    """The name a test would call: ``Class.method`` -> ``method``; dunder methods keep the class name."""
    cls, _, method = function.rpartition(".")
    if cls and method.startswith("__") and method.endswith("__"):
        return cls
    return method or function
