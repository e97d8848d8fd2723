"""Small generated data sets for the fine-tuning tests.

- `item_task(n, seed, held_out)`: chat records of a fixed reply format ("Item: pear, qty: 7" ->
  "ITEM=pear;QTY=7") that the base model does not follow; held-out records use items never trained on.
- `topic_rows(n, seed, held_out)`: {"text", "label"} rows of three topics; held-out sentences are unseen.
- `relevance_pairs(n, seed, held_out)`: {"text": query, "text_pair": sentence, "score": 1.0 | 0.0} rows, a
  sentence being relevant to the queries of its own topic (a cross-encoder's training data).
- `ner_sentences(n, seed)`: (words, BIO tags) with PER / LOC / ORG entities, some of two words.
"""


import json
import random

ITEMS = ("apple pear plum lemon mango grape melon peach cherry onion carrot potato tomato pepper garlic radish "
         "bean corn rice bread cheese butter milk honey sugar salt flour chair table lamp sofa desk shelf bed "
         "door window clock phone radio camera").split()
HELD_ITEMS = "kiwi spoon candle pillow violin wagon bucket ladder hammer basket".split()

TOPICS = {
    "sports": ("the striker scored a late goal", "our team won the match", "the referee showed a red card",
               "she ran the marathon in record time", "the coach praised the defenders",
               "fans cheered as the ball hit the net", "the tennis final went to five sets",
               "he swam the relay for the national team", "the pitcher threw a perfect game",
               "the league table changed after the derby"),
    "food": ("the soup needs more salt", "she baked fresh bread this morning", "the pasta was cooked perfectly",
             "add garlic and onions to the pan", "this cake tastes of lemon and honey",
             "the chef grilled the fish with herbs", "we ordered noodles and dumplings",
             "the salad had tomatoes and olives", "he roasted the vegetables in the oven",
             "the curry was spicy and rich"),
    "weather": ("heavy rain is expected tomorrow", "the sky cleared after the storm", "snow fell all night",
                "a cold wind blew from the north", "temperatures will rise this weekend",
                "thick fog covered the valley", "the forecast warns of thunder", "it was sunny and warm today",
                "frost formed on the windows", "a heatwave hit the coast"),
}
OPENERS = ("", "I heard that ", "apparently ", "today ", "my friend said ", "the news says ")
QUERIES = {"sports": ("results of the game", "who won the match", "news about athletes"),
           "food": ("a recipe for dinner", "what to cook tonight", "how does the dish taste"),
           "weather": ("the weather forecast", "will it rain", "how cold is it outside")}

PER = ["Alice", "Bob", "Carlos", "Diana", "Erik", "Fatima", "George", "Hana", "Ivan", "Julia", "Kofi", "Lena",
       "Maria Lopez", "John Smith", "Wei Chen", "Anna Berg"]
LOC = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Madrid", "Dublin", "New York", "Buenos Aires",
       "Cape Town", "Rome"]
ORG = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay Industries", "Stark Labs", "Wayne Corp",
       "Soylent", "Cyberdyne"]
NER_TEMPLATES = ["{PER} flew to {LOC} last week .", "{PER} works for {ORG} in {LOC} .",
                 "{ORG} opened an office in {LOC} .", "Yesterday {PER} met {PER} at the {ORG} building .",
                 "The mayor of {LOC} praised {ORG} .", "{PER} left {ORG} and moved to {LOC} .",
                 "In {LOC} , {PER} founded {ORG} .", "{ORG} hired {PER} as its new chief ."]


def item_task(n: int, seed: int, held_out: bool = False) -> list[dict]:
    """Chat records; a short system message keeps sequences short (the template's default one is long)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        word = HELD_ITEMS[i % len(HELD_ITEMS)] if held_out else rng.choice(ITEMS)
        qty = rng.randint(2, 99)
        out.append({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": f"Item: {word}, qty: {qty}"},
                                 {"role": "assistant", "content": f"ITEM={word};QTY={qty}"}]})
    return out


def topic_rows(n: int, seed: int, held_out: bool = False) -> list[dict]:
    """Training rows use the first 7 sentences of each topic; held-out rows only the last 3 (never seen)."""
    rng = random.Random(seed)
    labels = sorted(TOPICS)
    part = slice(7, None) if held_out else slice(0, 7)
    return [{"text": rng.choice(OPENERS) + rng.choice(TOPICS[lab][part]), "label": lab}
            for lab in (labels[i % 3] for i in range(n))]


def relevance_pairs(n: int, seed: int, held_out: bool = False) -> list[dict]:
    """Half relevant (query and sentence of one topic), half not; held-out rows use unseen sentences."""
    rng = random.Random(seed)
    labels = sorted(TOPICS)
    part = slice(7, None) if held_out else slice(0, 7)
    out = []
    for i in range(n):
        topic = labels[i % 3]
        other = topic if i % 2 == 0 else rng.choice([t for t in labels if t != topic])
        out.append({"text": rng.choice(QUERIES[topic]), "text_pair": rng.choice(TOPICS[other][part]),
                    "score": float(other == topic)})
    return out


def ner_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for piece in rng.choice(NER_TEMPLATES).split():
            if piece.startswith("{"):
                kind = piece[1:-1]
                name = rng.choice({"PER": PER, "LOC": LOC, "ORG": ORG}[kind]).split()
                words += name
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            else:
                words.append(piece)
                tags.append("O")
        out.append((words, tags))
    return out


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_conll(path, sentences) -> str:
    path.write_text("\n".join("".join(f"{w} {t}\n" for w, t in zip(ws, ts)) for ws, ts in sentences))
    return str(path)
