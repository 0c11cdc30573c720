"""The calculator environment: safe arithmetic (ast, never eval), Qwen-style tool calls, tool messages."""
import pytest

from onpolicy.envs.calculator import Calculator, evaluate, tool_calls


@pytest.mark.parametrize("expr, value", [("3*(4+5)", 27), ("7/2", 3.5), ("-2**3", -8), ("17 // 5", 3),
                                         ("17 % 5", 2), ("1.5e3 + 1", 1501.0), ("((2))", 2)])
def test_arithmetic(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr, message", [
    ("__import__('os').system('x')", "unsupported syntax Call"), ("a + 1", "unsupported syntax Name"),
    ("9**9**9", "exponent"), ("10**20", "out of range"), ("1e308*10", "out of range"), ("'a'*3", "Constant"),
    ("[1][0]", "Subscript"), ("1 if 1 else 2", "IfExp"), ("", "empty"), ("1" * 300, "longer than"),
    ("2 +", "not an arithmetic expression"), ("lambda: 1", "Lambda"),
])
def test_anything_else_is_refused(expr, message):
    with pytest.raises(ValueError, match=message):
        evaluate(expr)


def test_tool_calls_and_steps():
    env = Calculator(system_prompt="Use the calculator.")
    messages = env.reset({"prompt": "What is 12*7?"})
    assert messages == [{"role": "system", "content": "Use the calculator."},
                        {"role": "user", "content": "What is 12*7?"}]
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12*7"}}\n</tool_call>'
    assert env.step("Let me compute. " + call) == ([{"role": "tool", "content": "84"}], 0.0, False)
    two = call + '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1/0\\"}"}</tool_call>'
    assert env.step(two)[0] == [{"role": "tool", "content": "84"},
                                {"role": "tool", "content": "error: division by zero"}]
    assert env.step("<tool_call>{oops</tool_call>")[0][0]["content"] == "error: the tool call is not valid JSON"
    assert env.step('<tool_call>{"name": "python", "arguments": {}}</tool_call>')[0][0]["content"].startswith(
        "error: unknown tool 'python'")
    assert env.step("The answer is 84.") == ([], 0.0, True)
    assert env.calls == 5
    assert tool_calls("no call") == []
    nudged = Calculator(nudge="Use the tool.").step("84")
    assert nudged == ([{"role": "user", "content": "Use the tool."}], 0.0, False)
