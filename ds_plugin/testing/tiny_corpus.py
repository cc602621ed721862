"""The dialogues the tiny trained checkpoint learns (written for this project; no third-party
text). Each is (user message, assistant output) in DeepSeek-V3's chat format: plain answers,
answers that think first (`<think>...</think>`, for the thinking-budget tests), and tool
calls in V3's tool-call tokens (for the tool parser tests). Long answers give the speculative
decoding benchmark many steps of text the model knows.
"""

from __future__ import annotations

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Brazil", "Brasilia"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Norway", "Oslo"), ("Greece", "Athens"), ("Poland", "Warsaw"), ("Portugal", "Lisbon"),
]
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "ten", "eleven", "twelve"]

STORY = (
    "Once upon a time, in a small village by the sea, there lived a baker named Lina. Every "
    "morning she rose before the sun, lit the old stone oven and kneaded the dough for the "
    "bread of the whole village. One winter the storms kept the fishing boats in the harbour "
    "for many days, and the village grew hungry and sad. Lina opened her doors and baked from "
    "dawn to dusk, giving a warm loaf to every family that came. When spring returned and the "
    "boats sailed out again, the fishermen brought her the first catch of the season, and the "
    "village held a feast in her honour. From that day on, the people said that the sea and "
    "the oven had made a promise to look after each other, and they still tell the story to "
    "their children on long winter nights.")
SPECULATIVE = (
    "Speculative decoding makes a language model faster without changing its answers. A small "
    "draft model guesses the next few tokens, and the large target model checks all of the "
    "guesses in one forward pass. Every guess that matches what the target would have chosen "
    "is kept, and the first wrong guess is replaced by the target's own token. Because the "
    "target verifies every token, greedy output is exactly the same as without speculation. "
    "DeepSeek-V3 ships its own draft layer, called multi-token prediction, which reads the "
    "target's hidden state and predicts one token further ahead.")


def tool_call(name: str, arguments: str) -> str:
    """One call in DeepSeek-V3's tool-call format."""
    return f"{CALL_BEGIN}function{SEP}{name}\n```json\n{arguments}\n```{CALL_END}"


def dialogues() -> list[tuple[str, str]]:
    """(user message, assistant output); the end-of-sentence token is added by the trainer."""
    out: list[tuple[str, str]] = []
    for country, city in _CAPITALS:
        out.append((f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    for a, b in [(2, 3), (4, 5), (1, 6), (3, 3), (7, 2), (5, 5)]:
        out.append((f"What is {a} plus {b}?",
                    f"{_NUMBERS[a].capitalize()} plus {_NUMBERS[b]} is {_NUMBERS[a + b]}."))
    out += [
        ("Hello", "Hello! I am a tiny DeepSeek model served by vLLM with ds-plugin. Ask me "
                  "about capitals, numbers or the weather."),
        ("Hi", "Hi there! How can I help you today?"),
        ("Who are you?", "I am a tiny DeepSeek-V3 model trained in a few minutes on a laptop "
                         "processor. I know a handful of facts and one story."),
        ("Count from one to ten.", ", ".join(n.capitalize() if i == 0 else n
                                             for i, n in enumerate(_NUMBERS[1:11])) + "."),
        ("What color is the sky?", "The sky is blue on a clear day and grey when it rains."),
        ("Tell me a story.", STORY),
        ("How does speculative decoding work?", SPECULATIVE),
        ("What are the days of the week?", "Monday, Tuesday, Wednesday, Thursday, Friday, "
                                           "Saturday and Sunday."),
    ]
    # Thinking first: the thought is long enough for a small budget to cut it.
    out += [
        ("Why is the sky blue? Think first.",
         "<think>The question is about light. Sunlight holds every color. Air molecules "
         "scatter short blue waves much more than long red waves, so blue light reaches our "
         "eyes from every part of the sky.</think>The sky is blue because air scatters blue "
         "sunlight more than red sunlight."),
        ("Is seven a prime number? Think first.",
         "<think>A prime number has exactly two divisors. Seven is divided only by one and by "
         "seven. Two, three, four, five and six do not divide it.</think>Yes, seven is a prime "
         "number."),
        ("Which is larger, nine or twelve? Think first.",
         "<think>Count up from nine: ten, eleven, twelve. Twelve comes three steps after nine, "
         "so it is the larger number.</think>Twelve is larger than nine."),
    ]
    # Tool calls.
    out += [
        ("What is the weather in Paris?", "Let me check." + CALLS_BEGIN
         + tool_call("get_weather", '{"city": "Paris"}') + CALLS_END),
        ("What time is it in Tokyo?", CALLS_BEGIN + tool_call("get_time", '{"city": "Tokyo"}')
         + CALLS_END),
        ("Weather in Rome and the time in Oslo?", CALLS_BEGIN
         + tool_call("get_weather", '{"city": "Rome"}') + "\n"
         + tool_call("get_time", '{"city": "Oslo"}') + CALLS_END),
    ]
    return out
