"""Generation, free of HTTP: prompts and chat templates, what a template can do, the reply
parser (thinking, tool calls), grammars for structured outputs, the one generation run and
the one embedding run over the runtime.
"""
