"""The code-edit workload: a pasted Python file and an instruction to change it and return the
whole file, as IDE assistants ask. The answer repeats long runs of the prompt, which is what
prompt-lookup (n-gram) speculative decoding drafts from.

Prompts are raw ChatML text (the bundled SmolLM2's chat template), so every system, the bare
loop included, gets the same tokens; each is numbered per trial, first thing in the text, so no
cache holds a prompt a system saw before.
"""

from __future__ import annotations

SOURCE = '''\
"""Inventory of a small shop: items, stock levels and reorder suggestions."""

from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    stock: int
    reorder_level: int


def load_items(lines):
    items = []
    for line in lines:
        name, price, stock, level = line.strip().split(",")
        items.append(Item(name, float(price), int(stock), int(level)))
    return items


def total_value(items):
    total = 0
    for item in items:
        total += item.price * item.stock
    return total


def low_stock(items):
    result = []
    for item in items:
        if item.stock < item.reorder_level:
            result.append(item)
    return result


def reorder_quantity(item, target):
    missing = target - item.stock
    if missing < 0:
        return 0
    return missing


def most_valuable(items):
    best = None
    for item in items:
        if best is None or item.price * item.stock > best.price * best.stock:
            best = item
    return best


def report(items):
    lines = []
    for item in items:
        lines.append(f"{item.name}: {item.stock} at {item.price:.2f}")
    lines.append(f"total: {total_value(items):.2f}")
    return "\\n".join(lines)


def restock(items, target):
    orders = {}
    for item in low_stock(items):
        orders[item.name] = reorder_quantity(item, target)
    return orders
'''

# One instruction per client (up to 8), as users phrase them.
INSTRUCTIONS = (
    "Rename the variable `items` to `inventory` everywhere.",
    "Add type hints to every function.",
    "`reorder_quantity` should never order more than 100 units: fix it.",
    "Add a one-line docstring to every function.",
    "Rename `total_value` to `stock_value` and update its callers.",
    "Make `low_stock` a list comprehension.",
    "`most_valuable` returns None for an empty list: raise ValueError instead.",
    "Rename the class `Item` to `Product` everywhere.",
)


def prompts(number: int, clients: int) -> list[str]:
    """Client k's request: instruction k on the file, numbered `number`."""
    return [f"<|im_start|>user\n(Request {number}) {instruction} Return the whole file.\n\n"
            f"```python\n{SOURCE}```<|im_end|>\n<|im_start|>assistant\n"
            for instruction in INSTRUCTIONS[:clients]]
