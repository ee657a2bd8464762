"""Rule conditions (``routing_rules``, ``global_rules``): a small, safe expression language.

Rules
-----
1. A condition is one expression in Python's syntax cut down to a whitelist: fields
   (``task.critical``), constants (``'high'``, ``8``, ``0.8``, ``true``, ``false``),
   ``== != < <= > >=`` and chains (``0 < task.complexity <= 8``), ``in`` / ``not in`` a list
   (``task.type in ['a', 'b']``), ``and or not``, ``+ - * /`` and unary ``-``. Calls,
   subscripts, lambdas, comprehensions, f-strings, ``:=``, ``is``, ``_names``... are refused.
2. ``parse`` reads it once, at config load, with ``ast.parse(mode="eval")`` and compiles it into
   a tree of closures. Nothing is handed to ``eval``, ``exec`` or ``compile``.
3. Every name is a dotted field of a schema (``DEFAULT_SCHEMA`` unless one is passed). An
   unknown name, a syntax error, a construct off the whitelist or a type mismatch visible in
   the text raises ``RuleError`` naming the rule, the position and the cause.
4. Types are static: a condition is a bool; ``and or not`` take bools; ``< <= > >= + - * /``
   numbers; ``== !=`` two operands of one type; ``in`` a list literal of constants (or a
   ``list[str]`` field) on its right. ``task.privacy_level > 'medium'`` is an error.
5. ``Rule.evaluate(context) -> bool`` never raises for a dict of dotted names to values
   (``{"task.complexity": 9, "model.type": "local"}``).

Semantics: absent values
------------------------
A field is *absent* when the context has no key for it, maps it to ``None``, or holds a value
of the wrong type (``"9"`` for a number, ``1`` for a bool; ``context_problems`` lists those).

- Any comparison with an absent operand is **False**: ``==``, ``!=``, ``<``, ``in``, ``not in``
  alike (``task.type != 'x'`` is False when the type is unknown); a chain with one is False.
- Arithmetic with an absent operand is absent. So are division by zero and arithmetic that
  overflows: no exception leaves. A constant divisor of zero is a ``RuleError``.
- A bare bool field is true only when its value is ``true``; absent reads as **False**.
- ``not`` negates the bool its operand produced: ``not task.critical`` is **True** when
  ``task.critical`` is absent, and so is ``not (task.complexity > 8)`` when the complexity is
  (unlike ``task.complexity <= 8``: False). Two-valued logic; ``and``/``or`` short-circuit.
- A ``list[str]`` field accepts a list, tuple or set; items that are not strings never match.

Theory of operation
-------------------
``_Compiler.expr`` returns an ``_Expr`` per node: static type, a closure ``ctx -> value or
ABSENT``, and the folded value of constants. Comparisons and ``and or not`` yield real bools; a
bare bool field as a truth value is ``ctx.get(name) is True``. ``MAX_LENGTH`` and ``MAX_DEPTH``
bound the recursion. ``Rule.names`` lists the fields a rule reads, for the engine to compute.
"""

from __future__ import annotations

import ast
import difflib
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

BOOL, NUMBER, STR, STRS = "bool", "number", "str", "list[str]"
TYPES = (BOOL, NUMBER, STR, STRS)
MAX_LENGTH = 1000  # characters in a condition
MAX_DEPTH = 48  # levels of the expression tree (bounds the closures' recursion)


class Field(NamedTuple):
    """One declared field: its type (one of ``TYPES``) and a line saying what it means."""
    type: str
    doc: str = ""


Schema = Mapping[str, "Field | str"]  # dotted name -> Field, or just its type name

DEFAULT_SCHEMA: Mapping[str, Field] = MappingProxyType({
    "task.type": Field(STR, "kind of work, e.g. 'code_generation', 'test_generation'"),
    "task.complexity": Field(NUMBER, "estimated complexity, 0 (trivial) to 10"),
    "task.privacy_level": Field(STR, "caller's privacy level: 'low', 'normal' or 'high'"),
    "task.critical": Field(BOOL, "the caller marked the task critical"),
    "task.involves_ui_design": Field(BOOL, "the task involves user-interface design"),
    "task.requires_reasoning": Field(BOOL, "the task needs multi-step reasoning"),
    "data.contains_pii": Field(BOOL, "the PII detector found personal data in the prompt"),
    "model.id": Field(STR, "the candidate model's name in models.yaml"),
    "model.provider": Field(STR, "the candidate's provider, e.g. 'anthropic', 'local'"),
    "model.type": Field(STR, "the candidate's type: 'cloud' or 'local'"),
    "model.capabilities": Field(STRS, "the candidate model's declared capabilities"),
    "model.rate_limit_approaching": Field(BOOL, "the candidate's rate limiter is near its cap"),
    "cost_limit_reached": Field(BOOL, "today's cloud spend reached the daily budget"),
    "budget_mode": Field(BOOL, "the active strategy is cost_optimized (by config or an operator's override)"),
    "daily_cost": Field(NUMBER, "USD spent on cloud models today (UTC)"),
    "budget": Field(NUMBER, "USD of cloud spend per day: the lower of max_cloud_spend_per_day and "
                    "the active strategy's cloud_budget_per_day; absent when neither is set"),
})


# What a closure returns for an absent value (see "Semantics" above).
ABSENT: Any = type("Absent", (), {"__slots__": (), "__repr__": lambda self: "ABSENT"})()

Context = Mapping[str, Any]


class RuleError(ValueError):
    """A refused condition; ``position`` is 0-based in ``source``. A ValueError, for pydantic."""

    def __init__(self, message: str, position: int = 0, source: str = "", where: str = ""):
        self.message, self.position, self.source, self.where = message, position, source, where
        text = f"{where}: " if where else ""
        text += f"rule {source!r}: {message}" if source else message
        if source and "\n" not in source and "\r" not in source:
            text += f"\n    {source}\n    {' ' * position}^"
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class Rule:
    """A checked condition. ``rule.evaluate(context) -> bool`` never raises for a dict."""

    source: str
    names: frozenset[str]
    evaluate: Callable[[Context], bool] = field(compare=False, repr=False)


def parse(expr: str, schema: Schema = DEFAULT_SCHEMA, *, where: str = "") -> Rule:
    """Parse and check ``expr`` against ``schema``; ``where`` (file and key) prefixes errors."""
    types = _schema_types(schema)
    text, lead = expr.lstrip(), len(expr) - len(expr.lstrip())
    if not text:
        raise RuleError("empty condition", 0, expr, where)
    if len(expr) > MAX_LENGTH:
        raise RuleError(f"longer than {MAX_LENGTH} characters", MAX_LENGTH, expr, where)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        pos = len(text) if not e.offset else _offset(text, e.lineno or 1, e.offset - 1, True)
        raise RuleError(f"syntax error: {e.msg}", lead + pos, expr, where) from None
    except (ValueError, MemoryError, RecursionError) as e:  # null bytes; absurd nesting
        raise RuleError(f"cannot parse: {e or 'too deeply nested'}", 0, expr, where) from None
    comp = _Compiler(text, types)
    try:
        top = comp.expr(tree.body, 0)
        if top.type != BOOL:
            raise comp.error(tree.body, f"a condition must be true or false, not a {top.type}"
                             + "; compare it, e.g. `x > 0` or `x == 'a'`")
    except RuleError as e:
        raise RuleError(e.message, lead + e.position, expr, where) from None
    return Rule(expr, frozenset(comp.names), _truth(top))


def context_problems(context: Context, schema: Schema = DEFAULT_SCHEMA) -> list[str]:
    """Values in ``context`` whose type does not fit ``schema`` (they evaluate as absent)."""
    return [f"{name}: {context[name]!r} is not a {t}" for name, t in _schema_types(schema).items()
            if context.get(name) is not None and _getter(name, t)(context) is ABSENT]


# --------------------------------------------------------------------------- compiling

_Fn = Callable[[Context], Any]
_NC: Any = object()  # "not a constant"
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*\Z")  # no _private parts
_NEWLINE = re.compile(r"\r\n|\r|\n")


class _Expr(NamedTuple):
    type: str  # one of TYPES, or "list[<type>]" for a list literal
    get: _Fn  # ctx -> value, or ABSENT
    const: Any = _NC  # the value, when known at parse time
    bool_field: str = ""  # the name, when the node is a bare bool field


def _schema_types(schema: Schema) -> dict[str, str]:
    types = {n: f.type if isinstance(f, Field) else f for n, f in schema.items()}
    for name, t in types.items():
        if t not in TYPES or not _IDENT.match(name) or name in ("true", "false", "null", "None"):
            raise ValueError(f"bad schema entry {name!r}: {t!r} (types: {', '.join(TYPES)})")
    return types


def _offset(src: str, lineno: int, col: int, chars: bool) -> int:
    """0-based character offset of (1-based line, column in chars or UTF-8 bytes) in ``src``."""
    starts = [0, *(m.end() for m in _NEWLINE.finditer(src))]
    start = starts[min(max(lineno, 1), len(starts)) - 1]
    if not chars:
        col = len(src[start:].encode("utf-8")[:col].decode("utf-8", "ignore"))
    return min(max(start + col, 0), len(src))


def _getter(name: str, t: str) -> _Fn:
    """``ctx -> value`` for a field of type ``t``; ``ABSENT`` when missing, None or mistyped."""
    if t == BOOL:
        return lambda ctx: v if (v := ctx.get(name)) is True or v is False else ABSENT
    if t == STR:
        return lambda ctx: v if isinstance(v := ctx.get(name), str) else ABSENT
    if t == STRS:
        return lambda ctx: v if isinstance(v := ctx.get(name), _COLLECTIONS) else ABSENT

    def number(ctx: Context) -> Any:
        c = (v := ctx.get(name, ABSENT)).__class__
        return v if c is float or c is int or (isinstance(v, _NUMS) and c is not bool) else ABSENT
    return number


_COLLECTIONS, _NUMS = (list, tuple, set, frozenset), (int, float)


def _truth(e: _Expr) -> _Fn:
    """The closure for ``e`` used as a condition: a real bool, absent reads as False."""
    if e.bool_field:
        name = e.bool_field
        return lambda ctx: ctx.get(name) is True
    return e.get  # constants, comparisons, and/or/not: already a bool, never ABSENT


def _const(value: Any) -> _Expr:
    t = BOOL if value is True or value is False else STR if isinstance(value, str) else NUMBER
    return _Expr(t, lambda ctx: value, value)


_COMPARE = {ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne),
            ast.Lt: ("<", operator.lt), ast.LtE: ("<=", operator.le),
            ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
            ast.In: ("in", lambda a, b: a in b), ast.NotIn: ("not in", lambda a, b: a not in b)}
_ARITH = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub),
          ast.Mult: ("*", operator.mul), ast.Div: ("/", operator.truediv)}
_SYMBOLS = {ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.MatMult: "@", ast.LShift: "<<",
            ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&", ast.Is: "is",
            ast.IsNot: "is not", ast.UAdd: "unary +", ast.Invert: "~"}
_FORBIDDEN = {ast.Call: "function calls", ast.Subscript: "subscripts (x[...])",
              **dict.fromkeys((ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp),
                              "comprehensions"), ast.Lambda: "lambdas", ast.JoinedStr: "f-strings",
              ast.NamedExpr: "assignment expressions (:=)", ast.Dict: "dicts",
              ast.IfExp: "conditional expressions (x if c else y)", ast.Slice: "slices",
              ast.Set: "sets (use a list: [...])", ast.Starred: "starred expressions",
              ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield"}


class _Compiler:
    def __init__(self, src: str, types: dict[str, str]):
        self.src, self.types, self.names = src, types, set[str]()

    def error(self, node: ast.expr, message: str) -> RuleError:
        return RuleError(message, _offset(self.src, node.lineno, node.col_offset, False))

    def expr(self, node: ast.expr, depth: int) -> _Expr:
        if depth > MAX_DEPTH:
            raise self.error(node, f"nested deeper than {MAX_DEPTH} levels")
        method = _METHODS.get(type(node))
        if method is not None:
            return method(self, node, depth)
        if isinstance(node, (ast.List, ast.Tuple)):
            raise self.error(node, "a list is only allowed on the right of `in` / `not in`")
        raise self.error(node, f"{_FORBIDDEN.get(type(node), type(node).__name__)} not allowed")

    def constant(self, node: ast.Constant, depth: int) -> _Expr:
        if node.value is None or not isinstance(node.value, (bool, int, float, str)):
            raise self.error(node, f"{node.value!r} is not a value a rule can use; constants are "
                             "strings, numbers, true and false (an absent field is absent)")
        return _const(node.value)

    def name(self, node: ast.Name | ast.Attribute, depth: int) -> _Expr:
        parts, cur = [], node
        while isinstance(cur, ast.Attribute):
            parts.append(cur.attr)
            cur = cur.value
        if not isinstance(cur, ast.Name):
            raise self.error(node, "attributes are only read from field names (like task.type)")
        dotted = ".".join([cur.id, *reversed(parts)])
        if dotted in ("true", "false"):
            return _const(dotted == "true")
        if dotted in ("null", "None"):
            raise self.error(node, f"there is no {dotted}: a field the request does not carry is "
                             "absent, and any comparison with it is false")
        if any(p.startswith("_") for p in dotted.split(".")):
            raise self.error(node, f"names starting with '_' are not allowed: {dotted}")
        t = self.types.get(dotted)
        if t is None:
            near = difflib.get_close_matches(dotted, self.types, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise self.error(node, f"unknown name {dotted!r}{hint}; known names: "
                             + ", ".join(sorted(self.types)))
        self.names.add(dotted)
        return _Expr(t, _getter(dotted, t), bool_field=dotted if t == BOOL else "")

    def boolop(self, node: ast.BoolOp, depth: int) -> _Expr:
        word = "and" if isinstance(node.op, ast.And) else "or"
        fns = []
        for v in node.values:
            e = self.expr(v, depth + 1)
            if e.type != BOOL:
                raise self.error(v, f"`{word}` takes true/false operands, not a {e.type}")
            fns.append(_truth(e))
        return _Expr(BOOL, _boolop(fns, word == "and"))

    def unary(self, node: ast.UnaryOp, depth: int) -> _Expr:
        if not isinstance(node.op, (ast.Not, ast.USub)):
            raise self.error(node, f"operator {_SYMBOLS[type(node.op)]} not allowed in a rule")
        e, is_not = self.expr(node.operand, depth + 1), isinstance(node.op, ast.Not)
        if e.type != (BOOL if is_not else NUMBER):
            raise self.error(node, f"`{'not' if is_not else '-'}` cannot take a {e.type}")
        t, g = _truth(e), e.get
        if is_not:
            return _Expr(BOOL, lambda ctx: not t(ctx))
        if e.const is not _NC:
            return _const(-e.const)
        return _Expr(NUMBER, lambda ctx: ABSENT if (v := g(ctx)) is ABSENT else -v)

    def arith(self, node: ast.BinOp, depth: int) -> _Expr:
        if type(node.op) not in _ARITH:
            raise self.error(node, f"operator {_SYMBOLS[type(node.op)]} not allowed in a rule; "
                             "arithmetic is + - * /")
        sym, fn = _ARITH[type(node.op)]
        left, right = self.expr(node.left, depth + 1), self.expr(node.right, depth + 1)
        for e, n in ((left, node.left), (right, node.right)):
            if e.type != NUMBER:
                raise self.error(n, f"{sym} takes numbers, not a {e.type}")
        if sym == "/" and right.const is not _NC and right.const == 0:
            raise self.error(node.right, "division by zero")
        if left.const is not _NC and right.const is not _NC:
            try:
                return _const(fn(left.const, right.const))
            except OverflowError:
                raise self.error(node, "constant arithmetic overflows") from None
        return _Expr(NUMBER, _arith(fn, left, right))

    def compare(self, node: ast.Compare, depth: int) -> _Expr:
        nodes = [node.left, *node.comparators]
        operands = [self.operand(n, depth + 1) for n in nodes]
        pairs = []
        for i, op in enumerate(node.ops):
            if type(op) not in _COMPARE:
                raise self.error(nodes[i + 1], f"`{_SYMBOLS[type(op)]}` not allowed in a rule; "
                                 "use == or !=")
            sym, fn = _COMPARE[type(op)]
            self.check(nodes[i], nodes[i + 1], sym, operands[i].type, operands[i + 1].type)
            pairs.append(fn)
        if len(pairs) == 1:
            return _Expr(BOOL, _compare(pairs[0], operands[0], operands[1]))
        rest = [(fn, o.get) for fn, o in zip(pairs, operands[1:], strict=True)]
        return _Expr(BOOL, _chain(operands[0].get, rest))

    def operand(self, node: ast.expr, depth: int) -> _Expr:
        if not isinstance(node, (ast.List, ast.Tuple)):
            return self.expr(node, depth)
        items = [self.expr(n, depth + 1) for n in node.elts]
        types = {e.type for e in items}
        if any(e.const is _NC for e in items) or len(types) > 1 or types - {BOOL, NUMBER, STR}:
            raise self.error(node, "a list holds constants of one type: strings, numbers or bools")
        values = frozenset(e.const for e in items)
        return _Expr(f"list[{types.pop() if types else 'any'}]", lambda ctx: values, values)

    def check(self, left: ast.expr, right: ast.expr, sym: str, a: str, b: str) -> None:
        a_list, b_list = a.startswith("list"), b.startswith("list")
        if a_list or (b_list and sym not in ("in", "not in")):
            raise self.error(left if a_list else right,
                             "a list can only be the right operand of `in` / `not in`")
        if sym in ("in", "not in"):
            if not b_list:
                raise self.error(right, f"the right of `{sym}` is a list, like ['a', 'b'] or "
                                 f"('a',), not a {b}")
            item = b[5:-1]
            if item not in (a, "any"):
                raise self.error(left, f"`{sym}` looks for a {a} in a list of {item}")
        elif a != b:
            raise self.error(left, f"cannot compare a {a} with a {b} using {sym}")
        elif sym not in ("==", "!=") and a != NUMBER:
            raise self.error(left, f"{sym} orders numbers only, not a {a}; use == or `in`")


_METHODS: dict[type, Callable[..., _Expr]] = {
    ast.BoolOp: _Compiler.boolop, ast.Compare: _Compiler.compare, ast.UnaryOp: _Compiler.unary,
    ast.BinOp: _Compiler.arith, ast.Constant: _Compiler.constant, ast.Name: _Compiler.name,
    ast.Attribute: _Compiler.name}


# --------------------------------------------------------------------------- closures


def _boolop(fns: list[_Fn], is_and: bool) -> _Fn:
    f, g = fns[0], fns[-1]
    if len(fns) == 2:
        return (lambda ctx: f(ctx) and g(ctx)) if is_and else (lambda ctx: f(ctx) or g(ctx))
    if is_and:
        return lambda ctx: all(f(ctx) for f in fns)
    return lambda ctx: any(f(ctx) for f in fns)


def _arith(fn: Callable[[Any, Any], Any], left: _Expr, right: _Expr) -> _Fn:
    lget, rget = left.get, right.get

    def arith(ctx: Context) -> Any:
        if (a := lget(ctx)) is ABSENT or (b := rget(ctx)) is ABSENT:
            return ABSENT
        try:
            return fn(a, b)
        except (ZeroDivisionError, OverflowError):  # "Semantics": undefined arithmetic is absent
            return ABSENT
    return arith


def _compare(fn: Callable[[Any, Any], bool], left: _Expr, right: _Expr) -> _Fn:
    lget, rget, c = left.get, right.get, right.const
    if c is not _NC:
        if fn is operator.eq and left.bool_field:  # bool field == true/false
            name = left.bool_field
            return lambda ctx: ctx.get(name) is c
        return lambda ctx: (a := lget(ctx)) is not ABSENT and fn(a, c)

    def compare(ctx: Context) -> bool:
        return (a := lget(ctx)) is not ABSENT and (b := rget(ctx)) is not ABSENT and fn(a, b)
    return compare


def _chain(first: _Fn, rest: list[tuple[Callable[[Any, Any], bool], _Fn]]) -> _Fn:
    def chain(ctx: Context) -> bool:
        if (a := first(ctx)) is ABSENT:
            return False
        for fn, get in rest:
            b = get(ctx)
            if b is ABSENT or not fn(a, b):
                return False
            a = b
        return True
    return chain
