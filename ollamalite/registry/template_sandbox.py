"""Rendering chat templates within a budget.

Templates come from requests, models.yaml and GGUF files. Jinja's sandbox keeps them away from
Python's internals but not from spending CPU or memory: `{% for i in range(100000) %}{% for j
in range(100000) %}` runs for hours and `{{ 'x' * 10**10 }}` asks for 10 GB. A Python thread
cannot be stopped from outside, so a template pays as it goes, and the render fails with
BudgetExceeded (a 400) at the first step over:
- every loop iteration (whatever it loops over), call and filter is a step against MAX_STEPS,
  and past RENDER_SECONDS the next step fails;
- what it writes is counted against MAX_OUTPUT characters, and so is every value it makes;
- operations whose result size the template picks (`*`, `**`, `range`, `join`, `replace`,
  padding, indenting, format widths) are checked before they run, so no single one allocates
  far past the limits; the rest (`+`, `~`, slicing, most filters) at most add up sizes already
  checked, and are checked after.
Templates are also at most MAX_TEMPLATE characters: compiling one is not metered, and costs far
more than a render.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable, Iterable, Iterator, Mapping

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ollamalite.errors import BadRequest

# Loop iterations, calls and filters in one render: a chat template spends tens per message.
MAX_STEPS = 1_000_000
RENDER_SECONDS = 10.0
# Characters a render writes, and the longest string, list or mapping it may make: more than
# any context llama.cpp runs here holds (a request body is at most 64 MiB).
MAX_OUTPUT = 16 * 2**20
# Padding widths, indents, batch sizes and format widths a template may ask for.
MAX_WIDTH = 10_000
MAX_INDENT = 16  # tojson's: it repeats on every line, times the depth
MAX_INT_BITS = 4096
# Compiling costs far more than rendering, and nothing meters it: measured, a template dense
# with tags compiles at about 16 s and 1.3 GB per MiB of source, linearly. The longest chat
# templates in use are a few tens of KiB.
MAX_TEMPLATE = 64 * 1024
_CHECK_CLOCK_EVERY = 1024
_COUNTED = "ollamalite_counted"  # the filter every loop's iterable goes through
_CONCAT = "ollamalite_concat"  # and every `~` chain
# The flags, width and precision of a printf-style spec (`%-9999.9999d`) and the spec of a
# str.format field (`{:>9999}`); a width or precision given as an argument (`%*d`, `{:{}}`).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?([^a-zA-Z%(]*)")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_WIDTH_FROM_ARGS = re.compile(r"%[-#0 +]*\.?\*|\{[^{}]*:[^{}]*\{")


class BudgetExceeded(BadRequest):
    def __init__(self, what: str) -> None:
        super().__init__(f"template rendering exceeded its budget: {what}")


@dataclass
class Budget:
    """What one render has spent."""

    deadline: float = field(default_factory=lambda: time.monotonic() + RENDER_SECONDS)
    steps: int = 0
    output: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise BudgetExceeded(f"more than {MAX_STEPS} loop iterations, calls and filters")
        if self.steps % _CHECK_CLOCK_EVERY == 0 and time.monotonic() > self.deadline:
            raise BudgetExceeded(f"more than {RENDER_SECONDS:g} seconds")

    def write(self, text: str) -> None:
        self.output += len(text)
        if self.output > MAX_OUTPUT:
            raise BudgetExceeded(f"an output of more than {MAX_OUTPUT} characters")


_BUDGET: ContextVar[Budget] = ContextVar("template_budget")


def _step() -> None:
    _BUDGET.get().step()


def check_size(template: str) -> None:
    if len(template) > MAX_TEMPLATE:
        raise BadRequest(f"template is {len(template)} characters long; the limit is "
                         f"{MAX_TEMPLATE}")


@contextmanager
def parsing() -> Iterator[None]:
    """Jinja's parser and compiler recurse once per level of nesting (`{% if %}`, brackets):
    a template nested past Python's recursion limit is a 400, not a RecursionError."""
    try:
        yield
    except RecursionError:
        raise BadRequest("template error: nested too deeply") from None


def render(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """Render with a fresh budget (blocking: CPU; call off the event loop)."""
    budget = Budget()
    token = _BUDGET.set(budget)
    try:
        parts = []
        for part in template.generate(**variables):
            budget.write(part)
            parts.append(part)
        return "".join(parts)
    except RecursionError:
        raise BudgetExceeded("macros or loops nested too deeply") from None
    finally:
        _BUDGET.reset(token)


# -- sizes ----------------------------------------------------------------------------------

def _length(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def _sized(value: Any) -> Any:
    """`value`, once it is known to be within the limits."""
    if _length(value) > MAX_OUTPUT:
        raise BudgetExceeded(f"a value of more than {MAX_OUTPUT} characters or items")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise BudgetExceeded(f"an integer of more than {MAX_INT_BITS} bits")
    return value


def _within(size: int, what: str) -> None:
    if size > MAX_OUTPUT:
        raise BudgetExceeded(f"{what} would make more than {MAX_OUTPUT} characters or items")


def _width(value: Any) -> int:
    if isinstance(value, int) and value > MAX_WIDTH:
        raise BudgetExceeded(f"a width of {value} (at most {MAX_WIDTH})")
    return value if isinstance(value, int) else _length(value)


def _format_widths(spec: Any) -> None:
    if not isinstance(spec, str):
        return
    if _WIDTH_FROM_ARGS.search(spec):
        raise BudgetExceeded("a format width taken from the arguments")
    for part in (*_PERCENT_SPEC.findall(spec), *_BRACE_SPEC.findall(spec)):
        for number in re.findall(r"\d+", part):
            _width(int(number))


def _join_items(items: Iterable[Any], separator: Any) -> list[Any]:
    """A `join`'s items as a list (a generator is read once), their joined size checked."""
    listed = list(items)
    _within(sum(_length(str(item)) for item in listed) + _length(separator) * len(listed),
            "join")
    return listed


def _replaced_size(text: Any, old: Any = "", new: Any = "", *_: Any, **__: Any) -> int:
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    hits = text.count(old) if old else len(text) + 1
    return len(text) + hits * max(0, len(new) - len(old))


# How large the result of a size-choosing filter or str method can be, from its arguments
# (a method's receiver first): checked before it runs.
# Parameter names are the filters' (keywords the estimate does not need are ignored).
_GROWTH: dict[str, Callable[..., int]] = {
    "center": lambda s, width=80, *_, **__: max(_length(s), _width(width)),
    "ljust": lambda s, width=0, *_, **__: max(_length(s), _width(width)),
    "rjust": lambda s, width=0, *_, **__: max(_length(s), _width(width)),
    "zfill": lambda s, width=0, **__: max(_length(s), _width(width)),
    "expandtabs": lambda s, tabsize=8, **__: _length(s) * max(1, _width(tabsize)),
    "indent": lambda s, width=4, *_, **__:
        _length(s) + (str(s).count("\n") + 1) * _width(width),
    "wordwrap": lambda s, width=79, break_long_words=True, wrapstring=None, *_, **__:
        _length(s) * (1 + _length(wrapstring or "\n")),
    "batch": lambda value, linecount=0, *_, **__: _length(value) + _width(linecount),
    "replace": _replaced_size,
}
_FORMATS = ("format", "format_map")


def _check_call(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if name in _GROWTH:
        _within(_GROWTH[name](*args, **kwargs), name)
    elif name in _FORMATS and args:
        _format_widths(args[0])
    elif name == "tojson":
        indent = kwargs.get("indent", args[2] if len(args) > 2 else None)
        if isinstance(indent, int) and indent > MAX_INDENT:
            raise BudgetExceeded(f"a tojson indent of {indent} (at most {MAX_INDENT})")


def _budgeted_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that spends a step, is checked before it runs if it can grow its input, and
    whose result is checked; `functools.wraps` keeps Jinja's pass_context markers."""
    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        _step()
        value_at = 1 if getattr(fn, "jinja_pass_arg", None) else 0
        head, own = args[:value_at], args[value_at:]
        if name == "join" and own:
            separator = own[1] if len(own) > 1 else kwargs.get("d", "")
            own = (_join_items(own[0], separator), *own[1:])
        _check_call(name, own, kwargs)
        return _sized(fn(*head, *own, **kwargs))

    return run


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """A loop's items, each a step."""
    budget = _BUDGET.get()
    for item in iterable:
        budget.step()
        yield item


def _concat(parts: list[Any]) -> str:
    """`a ~ b ~ c`, checked before the string is made."""
    texts = [str(p) for p in parts]
    _within(sum(map(len, texts)), "~")
    return "".join(texts)


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_STEPS:
        raise BudgetExceeded(f"a range of {len(numbers)} numbers")
    return numbers


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox that meters its templates (see the module's docstring); render with
    `render()`, which gives each render its budget."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, filters: Mapping[str, Callable[..., Any]] | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _range
        del self.globals["lipsum"]  # writes as many paragraphs as asked
        self.filters.update(filters or {})
        self.filters = {name: _budgeted_filter(name, fn) for name, fn in self.filters.items()}
        self.filters[_COUNTED] = _counted
        self.filters[_CONCAT] = _concat

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The parsed template with every loop's iterable counted and every `~` chain
        checked (the loops and `~` of the compiled code are not hooks the sandbox offers)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = _filtered(loop.iter, _COUNTED)
        for parent in [tree, *tree.find_all(nodes.Node)]:
            for field_name, value in parent.iter_fields():
                if isinstance(value, nodes.Concat):
                    setattr(parent, field_name, _checked_concat(value))
                elif isinstance(value, list):
                    value[:] = [_checked_concat(v) if isinstance(v, nodes.Concat) else v
                                for v in value]
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        receiver = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(receiver, str):
            if name == "join" and args:
                args = (_join_items(args[0], receiver), *args[1:])
            _check_call(name, (receiver, *args), kwargs)
        return _sized(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _length(seq) and isinstance(times, int):
                    _within(_length(seq) * times, "*")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right > MAX_INT_BITS:
                raise BudgetExceeded(f"an integer of more than {MAX_INT_BITS} bits")
        elif operator == "%":
            _format_widths(left)
        return _sized(super().call_binop(context, operator, left, right))


def _filtered(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


def _checked_concat(concat: nodes.Concat) -> nodes.Filter:
    return _filtered(nodes.List(concat.nodes, lineno=concat.lineno), _CONCAT)
