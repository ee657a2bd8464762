"""Rule conditions (``router_agent.core.rules``): the shipped ones parse, every operator, the
absent semantics of the module docstring, every refusal with its message and position, then
generated expression trees checked against a reference interpreter written here.
"""

from __future__ import annotations

import ast
import math
import operator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from router_agent.core import rules as rules_module
from router_agent.core.rules import (
    BOOL,
    DEFAULT_SCHEMA,
    MAX_DEPTH,
    MAX_LENGTH,
    NUMBER,
    STR,
    STRS,
    Field,
    Rule,
    RuleError,
    context_problems,
    parse,
)

ROOT = Path(__file__).resolve().parent.parent


def shipped() -> list[str]:
    agents = yaml.safe_load((ROOT / "config" / "agents.yaml").read_text(encoding="utf-8"))
    routing = yaml.safe_load((ROOT / "config" / "routing.yaml").read_text(encoding="utf-8"))
    conditions = [r["condition"] for a in agents["agents"].values() for r in a["routing_rules"]]
    conditions += [r["condition"] for r in routing["routing"]["global_rules"]]
    return conditions


def ev(expr: str, **ctx: Any) -> bool:
    """Evaluate ``expr`` against keyword fields: ``task__type='x'`` is ``task.type``."""
    return parse(expr).evaluate({k.replace("__", "."): v for k, v in ctx.items()})


# --------------------------------------------------------------------------- shipped rules


def test_the_config_ships_conditions_to_check():
    assert len(shipped()) >= 14


@pytest.mark.parametrize("condition", sorted(set(shipped())))
def test_every_shipped_condition_parses_and_reads_declared_fields(condition: str):
    rule = parse(condition)
    assert rule.source == condition
    assert rule.names and rule.names <= set(DEFAULT_SCHEMA)
    assert rule.evaluate({}) is False  # nothing known: no shipped rule fires


@pytest.mark.parametrize(("condition", "names", "fires", "quiet"), [
    ("task.privacy_level == 'high'", {"task.privacy_level"},
     {"task.privacy_level": "high"}, {"task.privacy_level": "low"}),
    ("task.complexity > 8", {"task.complexity"}, {"task.complexity": 9}, {"task.complexity": 8}),
    ("task.type == 'code_generation'", {"task.type"},
     {"task.type": "code_generation"}, {"task.type": "test_generation"}),
    ("task.involves_ui_design", {"task.involves_ui_design"},
     {"task.involves_ui_design": True}, {"task.involves_ui_design": False}),
    ("task.requires_reasoning", {"task.requires_reasoning"},
     {"task.requires_reasoning": True}, {"task.requires_reasoning": False}),
    ("cost_limit_reached", {"cost_limit_reached"},
     {"cost_limit_reached": True}, {"cost_limit_reached": False}),
    ("budget_mode == true", {"budget_mode"}, {"budget_mode": True}, {"budget_mode": False}),
    ("daily_cost > budget * 0.8", {"daily_cost", "budget"},
     {"daily_cost": 80.01, "budget": 100}, {"daily_cost": 80.0, "budget": 100}),
    ("data.contains_pii", {"data.contains_pii"},
     {"data.contains_pii": True}, {"data.contains_pii": False}),
    ("model.rate_limit_approaching", {"model.rate_limit_approaching"},
     {"model.rate_limit_approaching": True}, {"model.rate_limit_approaching": False}),
    ("task.critical and model.type == 'local'", {"task.critical", "model.type"},
     {"task.critical": True, "model.type": "local"}, {"task.critical": True, "model.type": "cloud"}),
])
def test_the_conditions_of_the_issue(condition, names, fires, quiet):
    rule = parse(condition)
    assert rule.names == names
    assert rule.evaluate(fires) is True
    assert rule.evaluate(quiet) is False
    assert rule.evaluate({}) is False


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(("expr", "ctx", "expected"), [
    ("task.complexity == 5", {"task.complexity": 5}, True),
    ("task.complexity == 5", {"task.complexity": 5.0}, True),
    ("task.complexity != 5", {"task.complexity": 4}, True),
    ("task.complexity != 5", {"task.complexity": 5}, False),
    ("task.complexity < 5", {"task.complexity": 4.99}, True),
    ("task.complexity < 5", {"task.complexity": 5}, False),
    ("task.complexity <= 5", {"task.complexity": 5}, True),
    ("task.complexity > 5", {"task.complexity": 5}, False),
    ("task.complexity >= 5", {"task.complexity": 5}, True),
    ("5 < task.complexity", {"task.complexity": 6}, True),
    ("task.type == 'a'", {"task.type": "a"}, True),
    ("task.type != 'a'", {"task.type": "b"}, True),
    ("'a' == task.type", {"task.type": "a"}, True),
    ("model.type == model.provider", {"model.type": "local", "model.provider": "local"}, True),
    ("task.critical == false", {"task.critical": False}, True),
    ("task.critical == False", {"task.critical": False}, True),
    ("task.critical != true", {"task.critical": False}, True),
    ("task.critical == budget_mode", {"task.critical": True, "budget_mode": True}, True),
    ("task.critical and budget_mode", {"task.critical": True, "budget_mode": False}, False),
    ("task.critical or budget_mode", {"task.critical": False, "budget_mode": True}, True),
    ("task.critical and budget_mode and cost_limit_reached",
     {"task.critical": True, "budget_mode": True, "cost_limit_reached": True}, True),
    ("task.critical or budget_mode or cost_limit_reached", {"cost_limit_reached": True}, True),
    ("task.critical or budget_mode or cost_limit_reached", {}, False),
    ("not task.critical", {"task.critical": True}, False),
    ("not not task.critical", {"task.critical": True}, True),
    ("daily_cost + 10 > budget", {"daily_cost": 95, "budget": 100}, True),
    ("daily_cost - 10 > budget", {"daily_cost": 105, "budget": 100}, False),
    ("daily_cost * 2 >= budget", {"daily_cost": 50, "budget": 100}, True),
    ("daily_cost / budget > 0.5", {"daily_cost": 51, "budget": 100}, True),
    ("-daily_cost < 0", {"daily_cost": 1}, True),
    ("daily_cost > -1", {"daily_cost": 0}, True),
    ("daily_cost > 1 + 2 * 3", {"daily_cost": 7.5}, True),
    ("(daily_cost + 1) * 2 == 4", {"daily_cost": 1}, True),
    ("true", {}, True),
    ("false", {}, False),
    ("not false", {}, True),
    ("1 < 2", {}, True),
    ("task.complexity > 8 or task.privacy_level == 'high' and data.contains_pii",
     {"task.complexity": 9}, True),  # `and` binds tighter, as in Python
])
def test_each_operator(expr: str, ctx: dict[str, Any], expected: bool):
    assert parse(expr).evaluate(ctx) is expected


@pytest.mark.parametrize(("complexity", "expected"),
                         [(0, False), (0.5, True), (8, True), (8.01, False)])
def test_chained_comparisons_hold_pairwise(complexity: float, expected: bool):
    assert ev("0 < task.complexity <= 8", task__complexity=complexity) is expected
    assert ev("8 >= task.complexity > 0", task__complexity=complexity) is expected


def test_a_chain_of_fields():
    rule = parse("0 <= daily_cost < budget <= 1000")
    assert rule.names == {"daily_cost", "budget"}
    assert rule.evaluate({"daily_cost": 1, "budget": 2}) is True
    assert rule.evaluate({"daily_cost": 3, "budget": 2}) is False
    assert rule.evaluate({"daily_cost": 1}) is False  # the absent end of the chain


@pytest.mark.parametrize(("expr", "ctx", "expected"), [
    ("task.type in ['code_generation', 'code_completion']", {"task.type": "code_completion"}, True),
    ("task.type in ['code_generation', 'code_completion']", {"task.type": "ui"}, False),
    ("task.type in ('a', 'b')", {"task.type": "b"}, True),
    ("task.type in ('a',)", {"task.type": "a"}, True),
    ("task.type not in ['a', 'b']", {"task.type": "c"}, True),
    ("task.type not in ['a', 'b']", {"task.type": "a"}, False),
    ("task.type in []", {"task.type": "a"}, False),
    ("task.type not in []", {"task.type": "a"}, True),
    ("task.complexity in [1, 2.5, -3]", {"task.complexity": -3}, True),
    ("task.complexity in [1, 2.5]", {"task.complexity": 2.5}, True),
    ("task.complexity in [1, 2.5]", {"task.complexity": 2}, False),
    ("task.critical in [true]", {"task.critical": True}, True),
    ("'vision' in model.capabilities", {"model.capabilities": ["code", "vision"]}, True),
    ("'vision' in model.capabilities", {"model.capabilities": ("code",)}, False),
    ("'vision' not in model.capabilities", {"model.capabilities": {"code"}}, True),
    ("task.type in model.capabilities", {"task.type": "code", "model.capabilities": ["code"]}, True),
    ("'1' in model.capabilities", {"model.capabilities": [1, "x"]}, False),  # items not str: no match
])
def test_in_and_not_in(expr: str, ctx: dict[str, Any], expected: bool):
    assert parse(expr).evaluate(ctx) is expected


def test_true_and_false_inside_strings_stay_strings():
    assert ev("task.type == 'true'", task__type="true") is True
    assert ev("task.type == 'true'", task__type=True) is False


# --------------------------------------------------------------------------- absent semantics


@pytest.mark.parametrize(("expr", "expected"), [
    ("task.complexity > 8", False),
    ("task.complexity <= 8", False),
    ("task.complexity == 8", False),
    ("task.complexity != 8", False),  # != with an absent operand is False too
    ("task.type != 'code_generation'", False),
    ("task.type == 'code_generation'", False),
    ("task.type in ['a', 'b']", False),
    ("task.type not in ['a', 'b']", False),  # so is `not in`
    ("'vision' not in model.capabilities", False),
    ("task.critical", False),  # a bare absent bool reads as False
    ("task.critical == false", False),  # ... but compared, it is absent, not False
    ("task.critical != true", False),
    ("not task.critical", True),  # not negates the False the bare name produced
    ("not (task.complexity > 8)", True),  # ... and the False the comparison produced
    ("not (task.complexity <= 8)", True),
    ("task.critical or not budget_mode", True),
    ("daily_cost > budget * 0.8", False),
    ("daily_cost + 1 > 0", False),
    ("-daily_cost < 0", False),
    ("0 < task.complexity < 10", False),
    ("task.complexity == task.complexity", False),
])
def test_absent_fields(expr: str, expected: bool):
    assert parse(expr).evaluate({}) is expected


@pytest.mark.parametrize("absent", [{}, {"task.complexity": None}, {"task.complexity": "9"},
                                    {"task.complexity": True}, {"task.complexity": [9]},
                                    {"task.complexity": {"v": 9}}])
def test_missing_none_and_mistyped_values_are_all_absent(absent: dict[str, Any]):
    for expr in ("task.complexity > 8", "task.complexity <= 8", "task.complexity != 8",
                 "task.complexity in [9]", "task.complexity * 2 > 1"):
        assert parse(expr).evaluate(absent) is False, (expr, absent)
    assert parse("not (task.complexity > 8)").evaluate(absent) is True


@pytest.mark.parametrize(("expr", "value"), [
    ("task.critical", 1), ("task.critical", "true"), ("task.critical", "yes"),
    ("task.type == 'a'", ["a"]), ("task.type in ['1']", 1), ("'a' in model.capabilities", "abc"),
    ("'a' in model.capabilities", {"a": 1}),
])
def test_mistyped_values_never_match(expr: str, value: Any):
    name = next(iter(parse(expr).names))
    assert parse(expr).evaluate({name: value}) is False


def test_subclasses_of_the_declared_types_are_accepted():
    class Label(str):
        pass

    class Score(float):
        pass

    assert ev("task.type == 'a'", task__type=Label("a")) is True
    assert ev("task.complexity > 8", task__complexity=Score(9)) is True


def test_undefined_arithmetic_is_absent_and_never_raises():
    assert ev("daily_cost / budget > 0.5", daily_cost=1, budget=0) is False
    assert ev("not (daily_cost / budget > 0.5)", daily_cost=1, budget=0) is True
    assert ev("daily_cost / budget < 0.5", daily_cost=0.0, budget=0.0) is False
    huge = 10**400
    assert ev("daily_cost * 0.5 > 0", daily_cost=huge) is False  # OverflowError: absent
    assert ev("daily_cost / 3 > 0", daily_cost=huge) is False
    assert ev("daily_cost > 0.5", daily_cost=huge) is True  # comparing is exact, no overflow
    assert ev("daily_cost > budget", daily_cost=math.inf, budget=1) is True
    assert ev("daily_cost == daily_cost", daily_cost=math.nan) is False  # NaN as in Python


def test_context_problems_names_the_mistyped_values():
    problems = context_problems({"task.complexity": "9", "task.type": "a", "budget_mode": 1,
                                 "model.capabilities": "x", "daily_cost": None, "other": 1})
    assert sorted(problems) == ["budget_mode: 1 is not a bool",
                                "model.capabilities: 'x' is not a list[str]",
                                "task.complexity: '9' is not a number"]
    assert context_problems({"task.complexity": 3, "task.critical": False}) == []


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("expr", "fragment"), [
    ("len(task.type) > 3", "function calls"),
    ("__import__('os').system('x')", "function calls"),
    ("__import__", "names starting with '_'"),
    ("task.__class__", "names starting with '_'"),
    ("task.type.__class__ == 'x'", "names starting with '_'"),
    ("task._private", "names starting with '_'"),
    ("task.type[0] == 'a'", "subscripts"),
    ("model.capabilities[0] == 'a'", "subscripts"),
    ("(lambda: 1)", "lambdas"),
    ("[x for x in model.capabilities]", "comprehensions"),
    ("any(x for x in model.capabilities)", "function calls"),
    ("{x for x in model.capabilities}", "comprehensions"),
    ("{x: 1 for x in model.capabilities}", "comprehensions"),
    ("f'{task.type}' == 'a'", "f-strings"),
    ("(x := true)", ":="),
    ("(task.critical := true)", "assignment expressions"),
    ("task.critical if budget_mode else false", "conditional expressions"),
    ("{'a': 1}", "dicts"),
    ("task.type in {'a', 'b'}", "sets"),
    ("task.type is 'a'", "`is` not allowed"),
    ("task.type is not 'a'", "`is not` not allowed"),
    ("daily_cost ** 2 > 1", "operator ** not allowed"),
    ("daily_cost // 2 > 1", "operator // not allowed"),
    ("daily_cost % 2 > 1", "operator % not allowed"),
    ("~daily_cost > 1", "operator ~ not allowed"),
    ("+daily_cost > 1", "operator unary + not allowed"),
    ("daily_cost & 1", "operator & not allowed"),
    ("null == task.type", "there is no null"),
    ("task.type == None", "None is not a value"),
    ("task.type == b'a'", "is not a value"),
    ("daily_cost == 1j", "is not a value"),
    ("daily_cost == ...", "is not a value"),
    ("'abc'.upper == task.type", "attributes are only read from field names"),
    ("task.privacy_level > 'medium'", "orders numbers only"),
    ("task.critical > false", "orders numbers only"),
    ("task.complexity == 'high'", "cannot compare a number with a str"),
    ("task.critical == 'true'", "cannot compare a bool with a str"),
    ("task.critical == 1", "cannot compare a bool with a number"),
    ("task.type + 'x' == 'ax'", "+ takes numbers, not a str"),
    ("budget_mode * 2 > 1", "* takes numbers, not a bool"),
    ("-task.type == 'a'", "`-` cannot take a str"),
    ("not task.complexity", "`not` cannot take a number"),
    ("task.complexity and task.critical", "`and` takes true/false operands, not a number"),
    ("task.critical or task.type", "`or` takes true/false operands, not a str"),
    ("task.complexity", "must be true or false, not a number"),
    ("task.type", "must be true or false, not a str"),
    ("'high'", "must be true or false"),
    ("daily_cost * 0.8", "must be true or false"),
    ("[true]", "a list is only allowed on the right"),
    ("['a'] == task.type", "a list can only be the right operand"),
    ("task.type == ['a']", "a list can only be the right operand"),
    ("model.capabilities == 'a'", "a list can only be the right operand"),
    ("model.capabilities in ['a']", "a list can only be the right operand"),
    ("task.type in ('a')", "the right of `in` is a list"),
    ("task.type in 'abc'", "the right of `in` is a list"),
    ("task.type in task.privacy_level", "the right of `in` is a list"),
    ("task.complexity in ['1', '2']", "`in` looks for a number in a list of str"),
    ("task.type in ['a', 1]", "a list holds constants of one type"),
    ("task.type in [model.type]", "a list holds constants of one type"),
    ("task.complexity in model.capabilities", "`in` looks for a number in a list of str"),
    ("daily_cost / 0 > 1", "division by zero"),
    ("daily_cost / (1 - 1) > 1", "division by zero"),
    ("daily_cost / 0.0 > 1", "division by zero"),
    ("daily_cost > " + "9" * 400 + " / 3", "constant arithmetic overflows"),
])
def test_forbidden_constructs_and_type_errors(expr: str, fragment: str):
    with pytest.raises(RuleError) as info:
        parse(expr)
    assert fragment in info.value.message, info.value.message
    assert 0 <= info.value.position <= len(expr)
    assert info.value.source == expr


@pytest.mark.parametrize("expr", [
    "task.complexity >", "task.complexity > > 8", "task.type == 'a", "(task.critical",
    "task.critical)", "task.critical &&& budget_mode", "task.critical && budget_mode",
    "task.critical || budget_mode", "!task.critical", "task.complexity = 8", "x = 1",
    "import os", "task.critical; budget_mode", "`x`", "task.critical\nbudget_mode",
    "def f(): pass", "1" * 5000, "\x00", "a\x00b",
])
def test_syntax_errors(expr: str):
    with pytest.raises(RuleError) as info:
        parse(expr)
    assert info.value.message.startswith(("syntax error", "cannot parse", "longer than"))
    assert 0 <= info.value.position <= len(expr)


@pytest.mark.parametrize("expr", ["", "   ", "\n\t"])
def test_empty_conditions(expr: str):
    with pytest.raises(RuleError, match="empty condition"):
        parse(expr)


def test_unknown_names_list_the_known_ones_and_suggest_the_nearest():
    with pytest.raises(RuleError) as info:
        parse("task.complexty > 8")
    message = info.value.message
    assert "unknown name 'task.complexty'" in message
    assert "did you mean 'task.complexity'?" in message
    for name in DEFAULT_SCHEMA:
        assert name in message
    with pytest.raises(RuleError, match="unknown name 'task'"):
        parse("task")
    with pytest.raises(RuleError, match="unknown name 'task.complexity.value'"):
        parse("task.complexity.value > 1")
    with pytest.raises(RuleError, match="unknown name 'os.system'"):
        parse("os.system")


def test_errors_point_at_the_offending_text():
    def position(expr: str) -> int:
        with pytest.raises(RuleError) as info:
            parse(expr)
        return info.value.position

    assert position("task.critical and bogus") == len("task.critical and ")
    assert position("task.type == 'é' and bogus") == len("task.type == 'é' and ")  # chars, not bytes
    assert position("   bogus") == 3  # leading blanks kept in the offset
    assert position("(task.critical and\n  bogus)") == len("(task.critical and\n  ")
    assert position("task.complexity > > 8") == len("task.complexity > ")
    assert position("task.type in ['a', 'b'] and len(x)") == len("task.type in ['a', 'b'] and ")
    assert position("daily_cost > budget / 0") == len("daily_cost > budget / ")


def test_the_error_names_the_file_and_the_rule_and_draws_a_caret():
    expr = "task.critical and bogus"
    with pytest.raises(RuleError) as info:
        parse(expr, where="config/agents.yaml: agents.cto_agent.routing_rules[2].condition")
    err = info.value
    assert isinstance(err, ValueError)  # so a pydantic validator reports it as a config error
    text = str(err)
    assert text.startswith("config/agents.yaml: agents.cto_agent.routing_rules[2].condition: "
                           f"rule {expr!r}: unknown name 'bogus'")
    lines = text.splitlines()
    assert lines[-2] == f"    {expr}"
    assert lines[-1] == "    " + " " * expr.index("bogus") + "^"
    assert err.where.startswith("config/agents.yaml")


def test_nesting_and_length_are_bounded():
    deep = "(" * (MAX_DEPTH + 2) + "task.critical" + ")" * (MAX_DEPTH + 2)
    assert parse(deep).evaluate({"task.critical": True}) is True  # parentheses add no depth
    nots = "not " * (MAX_DEPTH + 1) + "task.critical"
    with pytest.raises(RuleError, match="nested deeper than"):
        parse(nots)
    assert parse("not " * (MAX_DEPTH - 1) + "task.critical").evaluate({}) is (MAX_DEPTH % 2 == 0)
    with pytest.raises(RuleError, match="longer than"):
        parse("task.critical or " * 100 + "task.critical")
    wide = " or ".join(["task.critical"] * 50)
    assert len(wide) < MAX_LENGTH and parse(wide).evaluate({"task.critical": True}) is True


# --------------------------------------------------------------------------- API


def test_rule_names_source_and_equality():
    rule = parse("task.critical and model.type == 'local' or task.critical")
    assert rule.names == frozenset({"task.critical", "model.type"})
    assert rule.source == "task.critical and model.type == 'local' or task.critical"
    assert rule == parse(rule.source)
    assert "model.type" in repr(rule)
    assert parse("true").names == frozenset()
    assert parse("  task.critical  ").source == "  task.critical  "


def test_a_custom_schema():
    schema = {"request.tokens": "number", "request.region": Field(STR, "where it came from"),
              "flags": STRS, "urgent": BOOL}
    rule = parse("request.tokens > 1000 and request.region in ['eu'] and 'x' in flags or urgent",
                 schema)
    assert rule.names == {"request.tokens", "request.region", "flags", "urgent"}
    assert rule.evaluate({"request.tokens": 2000, "request.region": "eu", "flags": ["x"]}) is True
    assert rule.evaluate({"urgent": True}) is True
    with pytest.raises(RuleError, match="unknown name 'task.critical'"):
        parse("task.critical", schema)


@pytest.mark.parametrize("schema", [{"a": "int"}, {"a.": BOOL}, {"_a": BOOL}, {"a._b": BOOL},
                                    {"true": BOOL}, {"null": BOOL}, {"a b": BOOL}, {"1a": NUMBER}])
def test_a_bad_schema_is_refused(schema: dict[str, Any]):
    with pytest.raises(ValueError, match="bad schema entry"):
        parse("true", schema)


def test_the_default_schema_documents_every_field():
    assert all(f.type in rules_module.TYPES and f.doc for f in DEFAULT_SCHEMA.values())
    with pytest.raises(TypeError):
        DEFAULT_SCHEMA["x"] = Field(BOOL)  # type: ignore[index]


def test_the_module_never_hands_text_to_eval_exec_or_compile():
    tree = ast.parse(Path(rules_module.__file__).read_text(encoding="utf-8"))
    called = {n.func.id for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__", "getattr", "setattr"}


def test_the_bench_prints_a_figure_per_shipped_condition(capsys: pytest.CaptureFixture[str]):
    from bench import rules as bench_rules

    rows = bench_rules.main(["--number", "200", "--repeat", "1"])
    assert [row["condition"] for row in rows] == shipped()
    assert all(row["present_us"] > 0 and row["absent"] is False for row in rows)
    out = capsys.readouterr().out
    assert "daily_cost > budget * 0.8" in out and "µs per call" in out


# --------------------------------------------------------------------------- generated trees

_ABSENT_REF = object()
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


def reference(expr: str, ctx: dict[str, Any], schema=DEFAULT_SCHEMA) -> tuple[bool, set[str]]:
    """The docstring's semantics, interpreted straight off Python's ``ast``: (result, names)."""
    names: set[str] = set()

    def lookup(name: str) -> Any:
        names.add(name)
        v, t = ctx.get(name), schema[name].type
        ok = {BOOL: lambda: v is True or v is False,
              NUMBER: lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
              STR: lambda: isinstance(v, str),
              STRS: lambda: isinstance(v, (list, tuple, set, frozenset))}[t]()
        return v if ok else _ABSENT_REF

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Name, ast.Attribute)):
            dotted = ast.unparse(node)
            return {"true": True, "false": False}[dotted] if dotted in ("true", "false") \
                else lookup(dotted)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            results = [truth(v) for v in node.values]  # no side effects: evaluate all
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return not truth(node.operand)
            v = value(node.operand)
            return _ABSENT_REF if v is _ABSENT_REF else -v
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            if a is _ABSENT_REF or b is _ABSENT_REF:
                return _ABSENT_REF
            try:
                return _BIN[type(node.op)](a, b)
            except (ZeroDivisionError, OverflowError):
                return _ABSENT_REF
        if isinstance(node, ast.Compare):
            operands = [value(n) for n in [node.left, *node.comparators]]
            if any(o is _ABSENT_REF for o in operands):
                return False
            return all(_CMP[type(op)](a, b)
                       for op, a, b in zip(node.ops, operands, operands[1:], strict=False))
        raise AssertionError(f"parse accepted {ast.dump(node)}")

    def truth(node: ast.expr) -> bool:
        return value(node) is True

    result = truth(ast.parse(expr.strip(), mode="eval").body)
    return result, names


def fields_of(t: str) -> list[str]:
    return sorted(n for n, f in DEFAULT_SCHEMA.items() if f.type == t)


NUM_LITERALS = st.one_of(st.integers(0, 20), st.sampled_from([0.0, 0.5, 0.8, 2.5, 1e6, 1e308]),
                         st.floats(0, 1e9, allow_nan=False, allow_infinity=False)).map(repr)
STR_LITERALS = st.sampled_from(["'a'", "'b'", "'high'", "'local'", "'code_generation'", "'é'",
                                "''", '"true"'])


def parenthesised(*parts: str) -> str:
    return "(" + " ".join(parts) + ")"


NUM = st.recursive(
    st.one_of(st.sampled_from(fields_of(NUMBER)), NUM_LITERALS),
    lambda sub: st.one_of(
        st.tuples(sub, st.sampled_from(["+", "-", "*", "/"]), sub).map(lambda t: parenthesised(*t)),
        sub.map(lambda s: f"(-{s})")),
    max_leaves=5)
STRING = st.one_of(st.sampled_from(fields_of(STR)), STR_LITERALS)
COMPARISON = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
MEMBERSHIP = st.sampled_from(["in", "not in"])
BOOL_LEAF = st.one_of(
    st.sampled_from(fields_of(BOOL) + ["true", "false", "True"]),
    st.tuples(NUM, st.lists(st.tuples(COMPARISON, NUM), min_size=1, max_size=3))
    .map(lambda t: parenthesised(t[0], *(f"{op} {r}" for op, r in t[1]))),
    st.tuples(STRING, st.sampled_from(["==", "!="]), STRING).map(lambda t: parenthesised(*t)),
    st.tuples(STRING, MEMBERSHIP, st.lists(STR_LITERALS, max_size=4).map(
        lambda xs: f"[{', '.join(xs)}]")).map(lambda t: parenthesised(*t)),
    st.tuples(NUM, MEMBERSHIP, st.lists(NUM_LITERALS, min_size=1, max_size=4).map(
        lambda xs: f"({', '.join(xs)},)")).map(lambda t: parenthesised(*t)),
    st.tuples(STRING, MEMBERSHIP, st.just("model.capabilities")).map(lambda t: parenthesised(*t)),
    st.tuples(st.sampled_from(fields_of(BOOL)), st.sampled_from(["==", "!="]),
              st.sampled_from(["true", "false", *fields_of(BOOL)])).map(lambda t: parenthesised(*t)),
)
BOOL_EXPR = st.recursive(
    BOOL_LEAF,
    lambda sub: st.one_of(
        sub.map(lambda s: f"(not {s})"),
        st.tuples(st.sampled_from([" and ", " or "]), st.lists(sub, min_size=2, max_size=4))
        .map(lambda t: "(" + t[0].join(t[1]) + ")"),
        st.tuples(sub, st.sampled_from(["==", "!="]), sub).map(lambda t: parenthesised(*t))),
    max_leaves=8)


WRONG = st.one_of(st.none(), st.text(max_size=3), st.integers(-3, 3), st.booleans(),
                  st.lists(st.integers(0, 2), max_size=2),
                  st.dictionaries(st.text(max_size=1), st.integers(), max_size=1))
RIGHT = {
    NUMBER: st.one_of(st.integers(-10, 10), st.just(10**400), st.just(0), st.just(0.0),
                      st.floats(allow_nan=True, allow_infinity=True)),
    STR: st.sampled_from(["a", "b", "high", "local", "code_generation", "é", "", "true"]),
    BOOL: st.booleans(),
    STRS: st.one_of(st.lists(st.sampled_from(["a", "b", "local"]), max_size=3),
                    st.lists(st.sampled_from(["a", "b"]), max_size=2).map(tuple),
                    st.frozensets(st.sampled_from(["a", "b", "local"])),
                    st.lists(st.one_of(st.integers(0, 2), st.just("a")), max_size=3)),
}


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for name, f in DEFAULT_SCHEMA.items():
        kind = draw(st.sampled_from(["missing", "right", "right", "right", "wrong"]))
        if kind == "right":
            ctx[name] = draw(RIGHT[f.type])
        elif kind == "wrong":
            ctx[name] = draw(WRONG)
    return ctx


def compiled(expr: str) -> Rule | None:
    """The parsed rule, or None when the generator folded a constant divisor to zero."""
    try:
        return parse(expr)
    except RuleError as e:
        if "division by zero" in e.message:
            return None
        raise


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=BOOL_EXPR, ctxs=st.lists(contexts(), min_size=1, max_size=4))
def test_generated_trees_agree_with_the_reference_interpreter(
        expr: str, ctxs: list[dict[str, Any]]):
    rule = compiled(expr)
    assume(rule is not None)
    assert rule is not None
    for ctx in ctxs:
        got = rule.evaluate(ctx)
        want, names = reference(expr, ctx)
        assert got is want, (expr, ctx)
        assert rule.names == names
    assert rule.evaluate({}) is reference(expr, {})[0]


UNTYPED = st.recursive(
    st.one_of(st.sampled_from(sorted(DEFAULT_SCHEMA)), NUM_LITERALS, STR_LITERALS,
              st.sampled_from(["true", "false", "None", "[]", "['a', 'b']", "[1, 2.5]", "('a',)",
                               "[true]", "['a', 1]", "-1", "0"])),
    lambda sub: st.one_of(
        sub.map(lambda s: f"(not {s})"),
        sub.map(lambda s: f"(-{s})"),
        st.tuples(sub, st.sampled_from(["+", "-", "*", "/", "==", "!=", "<", "<=", ">", ">=", "in",
                                        "not in", "and", "or"]), sub).map(lambda t: parenthesised(*t)),
        st.tuples(sub, COMPARISON, sub, COMPARISON, sub).map(lambda t: parenthesised(*t))),
    max_leaves=6)


@settings(max_examples=1000, deadline=None)
@given(expr=UNTYPED, ctx=contexts())
def test_untyped_trees_are_refused_with_rule_error_or_agree_with_the_reference(
        expr: str, ctx: dict[str, Any]):
    """Any mix of types: the type checker refuses it, or the result is the reference's."""
    try:
        rule = parse(expr)
    except RuleError as e:
        assert 0 <= e.position <= len(expr)
        return
    assert rule.evaluate(ctx) is reference(expr, ctx)[0], expr


ANY_TOKEN = st.sampled_from([
    "task.complexity", "task.type", "task.critical", "model.capabilities", "daily_cost", "budget",
    "'a'", "8", "0", "0.8", "true", "false", "None", "null", "and", "or", "not", "in", "not in", "is",
    "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "//", "**", "(", ")", "[", "]", ",", ".",
    "__class__", "f'x'", "lambda", ":", ":=", "x", "if", "else", "for",
])


@settings(max_examples=600, deadline=None)
@given(tokens=st.lists(ANY_TOKEN, min_size=1, max_size=12), ctx=contexts())
def test_any_token_soup_parses_or_raises_rule_error_and_never_crashes_evaluation(
        tokens: list[str], ctx: dict[str, Any]):
    expr = " ".join(tokens)
    try:
        rule = parse(expr)
    except RuleError as e:
        assert 0 <= e.position <= len(expr)
        return
    got = rule.evaluate(ctx)
    assert got is reference(expr, ctx)[0], expr


@settings(max_examples=300, deadline=None)
@given(expr=st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_rule_error(expr: str):
    try:
        rule = parse(expr)
    except RuleError as e:
        assert 0 <= e.position <= len(expr)
        return
    assert rule.evaluate({}) in (True, False)
