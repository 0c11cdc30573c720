"""`tool_methods`: a TRL `environment_factory`-style class (reset + public tool methods) runs unchanged."""
from onpolicy.envs import resolve_env
from onpolicy.envs.config import EnvArgs


class Counter:
    """As in TRL's examples: state kept across the trajectory's calls."""

    def __init__(self, start: int = 0):
        self.start = start

    def reset(self, offset=0):
        self.count = self.start + offset

    def increment(self, a: int) -> int:
        """
        Add to the counter.

        Args:
            a: The value to add
        """
        self.count += a
        return self.count


def _call(name, **arguments):
    import json

    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def test_trl_style_class_as_an_environment():
    make = resolve_env(EnvArgs(name="tool_methods", kwargs={"cls": f"{__name__}:Counter", "init": {"start": 10}}))
    env = make()
    assert env.tools[0]["function"]["name"] == "increment"
    assert env.reset({"prompt": "count", "offset": 5, "answer": "x"}) == [{"role": "user", "content": "count"}]
    assert env.step(_call("increment", a=2)) == ([{"role": "tool", "content": "17"}], 0.0, False)
    assert env.step(_call("increment", a=1) + _call("nope"))[0] == [
        {"role": "tool", "content": "18"},
        {"role": "tool", "content": "error: unknown tool 'nope'; the tools are increment"}]
    assert env.step(_call("increment", b=1))[0][0]["content"].startswith("error: TypeError")
    assert env.step("18") == ([], 0.0, True)
