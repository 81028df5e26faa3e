"""The in-process transformers backend's dynamic batching, on the real SmolLM2: concurrent requests are
answered together, and each gets exactly what it would have got alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from agentdistill.models.cost import Price
from agentdistill.models.local import LocalModel

pytest.importorskip("transformers")

SYSTEM = {"role": "system", "content": "You play a text game. Reply with one action."}
ROOMS = ["a kitchen with a closed fridge", "a bedroom with a wardrobe and a key on the bed",
         "a cellar. Exits: north, up. A lantern hangs on a hook", "the garden; a shovel leans on a wall",
         "a long corridor with doors to the east and west and a painting of a ship"]
CHATS = [[SYSTEM, {"role": "user", "content": f"You are in {room}. What do you do?"}] for room in ROOMS]


@pytest.fixture(scope="module")
def models():
    """Batched and unbatched, without the prefix cache: what is compared is batching alone (a prompt
    prefilled in two parts sums in another order, so a near-tie token may flip; see the prefix tests)."""
    price = Price(10.0, 20.0)
    batched = LocalModel("local/smollm2-135m", price=price, batching=True)
    kept, batched._loaded.prefixes = batched._loaded.prefixes, None  # both share the loaded weights
    yield batched, LocalModel("local/smollm2-135m", price=price, batching=False)
    batched._loaded.prefixes = kept


class _Steps:
    """Records every engine step's sequences (how many ran together) and tokens fed."""

    def __init__(self, monkeypatch):
        from agentdistill.models.engine import Engine

        self.sequences, self.tokens = [], []
        original = Engine._forward

        def forward(engine, feeds):
            self.sequences.append(len(feeds))
            self.tokens.append(sum(len(t) for _, t in feeds))
            return original(engine, feeds)

        monkeypatch.setattr(Engine, "_forward", forward)


def _concurrently(model, chats, **kw):
    with ThreadPoolExecutor(len(chats)) as pool:
        return list(pool.map(lambda c: model.complete(c[0], max_tokens=c[1], **kw), chats))


def test_batched_greedy_equals_unbatched_with_each_requests_own_tokens_and_limits(models, monkeypatch):
    batched, alone = models
    limits = [8, 24, 16, 24, 12]  # different max_tokens in one batch
    want = [alone.complete(c, max_tokens=m)[0] for c, m in zip(CHATS, limits)]
    steps = _Steps(monkeypatch)
    got = [r[0] for r in _concurrently(batched, list(zip(CHATS, limits)))]
    assert max(steps.sequences) > 1, steps.sequences  # they really were answered together
    for g, w, m in zip(got, want, limits):
        assert g.text == w.text and g.finish_reason == w.finish_reason
        assert g.prompt_tokens == w.prompt_tokens and g.completion_tokens == w.completion_tokens <= m
        assert g.cost == pytest.approx(w.cost) and g.cost == pytest.approx(
            (g.prompt_tokens * 10.0 + g.completion_tokens * 20.0) / 1e6)
    assert len({g.prompt_tokens for g in got}) > 1  # each request's own prompt, not the padded width


MORE_ROOMS = ["a river bank; a boat is tied to a post and a fishing rod lies nearby", "a market stall selling apples",
              "a laboratory with beakers, a burner and a thermometer on the table", "a cave"]


@pytest.mark.parametrize("dtype,continuous", [("bfloat16", True), ("float32", True), ("bfloat16", False),
                                              ("float32", False)])
def test_greedy_output_does_not_depend_on_the_batch_it_is_in(dtype, continuous):
    """Whatever a request is batched with (which the scheduler decides by timing), its greedy text is the one
    `model.generate` gives it alone: on the continuous-batching engine (Llama models) and on padded batches of
    `model.generate` (other architectures). Without per-row attention and two-row matmuls, 20 of 66 such bf16
    outputs of padded batches differed."""
    from agentdistill.models.batching import Request
    from agentdistill.openmp import on_the_generation_thread

    model = LocalModel("local/smollm2-135m", dtype=dtype, batching=False)
    kept, model._loaded.prefixes = model._loaded.prefixes, None
    chats = CHATS + [[SYSTEM, {"role": "user", "content": f"You are in {room}. What do you do?"}] for room in MORE_ROOMS]
    ask = lambda group: [Request(chats[i], 1, 0.0, 32, (), owner=model) for i in group]  # noqa: E731
    assert model._loaded.continuous
    try:
        alone = [on_the_generation_thread(model._generate_here, ask([i]))[0][0].text for i in range(len(chats))]
        model._loaded.continuous = continuous
        groupings = [[list(range(9))], [[8, 0, 5], [1, 7], [2, 6, 4, 3]]]  # every prompt padded in some batch
        for grouping in groupings:
            for group in grouping:
                got = [completions[0].text for completions in model._generate(ask(group))]
                assert got == [alone[i] for i in group], (dtype, group)
    finally:
        model._loaded.prefixes, model._loaded.continuous = kept, True


def test_a_request_joins_the_running_batch_and_leaves_it_when_done(models, monkeypatch):
    """Continuous batching: a request sent while another decodes is prefilled at the next step and decodes
    beside it, instead of waiting for it to finish; the short one leaves first; both get their texts alone."""
    import threading
    import time

    batched, alone = models
    want = [alone.complete(CHATS[0], max_tokens=40)[0], alone.complete(CHATS[3], max_tokens=6)[0]]
    steps = _Steps(monkeypatch)
    done: list[str] = []
    got: dict[str, object] = {}

    def ask(name, chat, limit):
        got[name] = batched.complete(chat, max_tokens=limit)[0]
        done.append(name)

    first = threading.Thread(target=ask, args=("long", CHATS[0], 40))
    first.start()
    while len(steps.sequences) < 4:  # the long one is decoding alone
        time.sleep(0.01)
    ask("short", CHATS[3], 6)
    first.join()
    assert done == ["short", "long"]
    assert steps.sequences[:4] == [1, 1, 1, 1] and 2 in steps.sequences, steps.sequences
    assert got["long"].text == want[0].text and got["short"].text == want[1].text
    assert want[0].completion_tokens == 40 and got["short"].completion_tokens == want[1].completion_tokens


def test_a_request_that_cannot_be_admitted_fails_alone(models):
    """A chat the template cannot render gets its own error; the request beside it is answered as alone."""
    batched, alone = models
    want = alone.complete(CHATS[1], max_tokens=8)[0].text
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(batched.complete, [{"role": "user"}], max_tokens=8)
        good = pool.submit(batched.complete, CHATS[1], max_tokens=8)
        assert good.result()[0].text == want
        with pytest.raises(Exception, match="content"):
            bad.result()
    assert batched.complete(CHATS[1], max_tokens=8)[0].text == want  # the engine goes on


def _answer_in_a_thread(model, chat, max_tokens, timeout=120):
    """The completion or the exception of one call, or AssertionError if it was never answered (a daemon
    thread: a request left waiting forever must fail the test, not hang the suite)."""
    import threading

    box = {}

    def call():
        try:
            box["result"] = model.complete(chat, max_tokens=max_tokens)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    assert box, "the request was never answered"
    return box.get("result"), box.get("error")


def test_a_failure_anywhere_in_a_step_answers_its_requests_and_the_engine_goes_on(models, monkeypatch):
    """A step that fails before its requests are admitted (there, before: they waited forever) gives them the
    error; a scheduler that dies gives its requests an error too, and the next request gets a new engine."""
    from agentdistill.models.engine import Engine

    batched, alone = models
    want = alone.complete(CHATS[2], max_tokens=8)[0].text
    step_here, step, failures = Engine._step_here, Engine._step, []

    def failing_step_here(engine, jobs, new):
        if not failures:
            failures.append("step")
            raise RuntimeError("injected before admission")
        return step_here(engine, jobs, new)

    monkeypatch.setattr(Engine, "_step_here", failing_step_here)
    result, error = _answer_in_a_thread(batched, CHATS[2], 8)
    assert isinstance(error, RuntimeError) and "injected" in str(error)
    assert batched.complete(CHATS[2], max_tokens=8)[0].text == want

    def dying_step(engine, jobs, new):
        if len(failures) == 1:
            failures.append("scheduler")
            raise SystemExit  # not an Exception: it ends the scheduler's thread
        return step(engine, jobs, new)

    monkeypatch.setattr(Engine, "_step", dying_step)
    result, error = _answer_in_a_thread(batched, CHATS[2], 8)
    assert isinstance(error, RuntimeError) and "engine stopped" in str(error), error
    assert batched.complete(CHATS[2], max_tokens=8)[0].text == want


def test_a_request_for_no_tokens_gets_none_and_a_negative_limit_fails_alone(models):
    batched, alone = models
    for model in models:
        (c,) = model.complete(CHATS[0], max_tokens=0)
        assert (c.text, c.completion_tokens, c.finish_reason) == ("", 0, "length") and c.prompt_tokens > 0
        with pytest.raises(ValueError, match="max_tokens must be a whole number >= 0"):
            model.complete(CHATS[0], max_tokens=-1)
    assert batched.complete(CHATS[0], max_tokens=6)[0].text == alone.complete(CHATS[0], max_tokens=6)[0].text


def test_a_prompt_longer_than_a_prefill_chunk_gets_the_text_generate_gives_it():
    """The engine attends a prompt over CHUNK tokens in masked chunks, `model.generate` in one causal call."""
    from agentdistill.models.batching import Request
    from agentdistill.models.engine import CHUNK
    from agentdistill.openmp import on_the_generation_thread

    model = LocalModel("local/smollm2-135m", batching=False)
    kept, model._loaded.prefixes = model._loaded.prefixes, None
    rules = " ".join(f"Rule {i}: open doors before walking through them, and look at a room before taking "
                     "things." for i in range(40))
    try:
        for room in ROOMS[:2]:
            chat = [{"role": "system", "content": SYSTEM["content"] + " " + rules},
                    {"role": "user", "content": f"You are in {room}. What do you do?"}]
            ask = lambda: [Request(chat, 1, 0.0, 16, (), owner=model)]  # noqa: E731
            (want,), = on_the_generation_thread(model._generate_here, ask())
            (got,), = model._generate(ask())
            assert want.prompt_tokens > CHUNK and got.text == want.text, (room, got.text, want.text)
    finally:
        model._loaded.prefixes = kept


def test_n_samples_share_a_call_and_differ_when_sampling(models, monkeypatch):
    batched, _ = models
    steps = _Steps(monkeypatch)
    samples = batched.complete(CHATS[0], n=4, temperature=1.0, max_tokens=24)
    assert len(samples) == 4 and len({s.text for s in samples}) > 1
    # the prompt prefilled once, then its four samples decoded side by side
    fed = sum(x.completion_tokens > 0 for x in samples)  # a sample whose first token ends it is not fed again
    assert steps.tokens[0] == samples[0].prompt_tokens and steps.sequences[1] == fed > 1, (steps.tokens, steps.sequences)
    assert len({s.prompt_tokens for s in samples}) == 1 and all(0 < s.completion_tokens <= 24 for s in samples)
    greedy = batched.complete(CHATS[0], n=3, max_tokens=12)
    assert len({s.text for s in greedy}) == 1 and sum(s.completion_tokens for s in greedy) == greedy[0].completion_tokens


def test_stop_strings_cut_each_request_in_a_batch(models):
    batched, alone = models
    fulls = [alone.complete(CHATS[i], max_tokens=24)[0].text for i in (1, 2)]
    stop = fulls[0].split()[1] if len(fulls[0].split()) > 1 else fulls[0][:2]
    got = _concurrently(batched, [(CHATS[1], 24), (CHATS[2], 24)], stop=[stop])
    for (g,), full in zip(got, fulls):  # each request cut at its own first stop string, or left whole
        assert stop not in g.text and g.text == (full[: full.index(stop)] if stop in full else full)
        assert g.finish_reason == "stop" or stop not in full


def test_prompts_reuse_earlier_prompts_kv_and_greedy_outputs_do_not_change(monkeypatch):
    """Automatic prefix caching: a batch's rows each prefill only what follows their longest prefix
    shared with a kept prompt (a long system prompt across episodes; an episode's own last prompt on
    its next turn), and get exactly the uncached outputs and token counts."""
    from agentdistill.models.prefix_cache import PrefixCache

    model = LocalModel("local/smollm2-135m", dtype="float32")  # fp32: the comparison is exact, not bf16-noisy
    rules = " ".join(f"Rule {i}: examine the room, then open what is closed before you take item {i}."
                     for i in range(40))
    system = {"role": "system", "content": f"{SYSTEM['content']} {rules}"}

    def episode(room: int, turns: int):  # the chat of one episode after `turns` actions
        chat = [system, CHATS[room][1]]
        for t in range(turns):
            chat += [{"role": "assistant", "content": f"go east {t}"},
                     {"role": "user", "content": f"Observation: room {t}; a box and a door."}]
        return chat

    turns = [[episode(room, t) for room in range(4)] for t in range(3)]
    loaded = model._loaded
    loaded.prefixes = None  # the reference: every call prefills its whole prompt
    want = [[model.complete(c, max_tokens=16)[0] for c in chats] for chats in turns]
    assert all(w.cached_prompt_tokens is None for ws in want for w in ws)
    loaded.prefixes = cache = PrefixCache()
    system_len = len(model.tokenizer.apply_chat_template([system], tokenize=True, return_dict=False))
    try:
        first = model.complete(turns[0][0], max_tokens=16)[0]  # nothing kept yet
        steps = _Steps(monkeypatch)  # each turn of the four episodes concurrently, as a run plays them
        got = [[g for (g,) in _concurrently(model, [(c, 16) for c in chats])] for chats in turns]
        sizes = steps.sequences
        samples = model.complete([system, CHATS[4][1]], n=3, temperature=1.0, max_tokens=16)  # n rows, one prefix
    finally:
        loaded.prefixes = PrefixCache()
    assert max(sizes) > 1, sizes  # some requests were answered together, each from its own prefix
    assert first.cached_prompt_tokens == 0 and first.text == want[0][0].text
    for t in range(3):
        for room, (g, w) in enumerate(zip(got[t], want[t])):
            assert g.text == w.text and g.prompt_tokens == w.prompt_tokens and g.completion_tokens == w.completion_tokens
            if t == 0:  # a new episode: the system prompt (and more, for the episode played before)
                assert system_len <= g.cached_prompt_tokens < g.prompt_tokens
            else:  # its own last prompt, ending on the assistant's turn, is a prefix of this one
                assert g.cached_prompt_tokens == want[t - 1][room].prompt_tokens
    # each episode's newest prompt replaced the ones it extends: one entry per episode
    assert len(cache) == 5
    assert len(samples) == 3 and len({x.text for x in samples}) > 1
    assert len({x.cached_prompt_tokens for x in samples}) == 1 and samples[0].cached_prompt_tokens >= system_len
    # a trainer's live weights change every step: no prefix of theirs is kept unless they say when they change
    assert LocalModel.from_model("student", model.model, model.tokenizer)._loaded.prefixes is None
    updates = [0]
    live = LocalModel.from_model("student", model.model, model.tokenizer, weights_version=lambda: updates[0])
    chat = episode(2, 1)
    assert live.complete(chat[:2], max_tokens=4)[0].cached_prompt_tokens == 0
    assert live.complete(chat, max_tokens=4)[0].cached_prompt_tokens == want[0][2].prompt_tokens
    updates[0] += 1  # an optimizer step: every kept prompt is stale
    again = live.complete(chat, max_tokens=4)[0]
    assert again.cached_prompt_tokens == 0 and len(live._loaded.prefixes) == 1
    batcher = live._loaded._batcher
    live.release()  # what a trainer does after its rollouts: kept prompts and the batcher's thread go
    batcher._thread.join(5)
    assert len(live._loaded.prefixes) == 0 and not batcher._thread.is_alive()


def _clients(batcher, delays: list[float], rounds: list[int]) -> list[int]:
    """Episodes asking a batcher again and again, each taking its own env-step delay between answers;
    returns the size of every batch the batcher ran."""
    import threading
    import time

    from agentdistill.models.batching import Request

    def client(i):
        for _ in range(rounds[i]):
            batcher.submit(Request([{"role": "user", "content": str(i)}], 1, 0.0, 4, ()))
            time.sleep(delays[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(delays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return batcher.sizes


def _batcher(patience: float):
    import time

    from agentdistill.models.batching import Batcher

    def generate(batch):  # a generation takes 60 ms whatever the batch
        time.sleep(0.06)
        return [r.messages[0]["content"] for r in batch]

    batcher = Batcher(lambda batch: batcher.sizes.append(len(batch)) or generate(batch), patience=patience)
    batcher.sizes = []
    return batcher


def test_episodes_coming_back_a_few_ms_apart_are_regrouped_into_one_batch():
    import time

    delays = [0.0, 0.005, 0.01, 0.015]  # each episode's env step between two model calls
    batchers = [_batcher(patience=0.0), _batcher(patience=0.05), _batcher(patience=0.05), _batcher(patience=1.0)]
    split = _clients(batchers[0], delays, [6] * 4)  # what the batcher did before regrouping
    regrouped = _clients(batchers[1], delays, [6] * 4)
    # every round in one batch (the very first may be split: the threads start one by one)
    assert sum(regrouped) == 24 and regrouped.count(4) >= 5, regrouped
    assert sum(split) == 24 and len(split) > len(regrouped) + 2, split  # without: a batch leaves with the first back
    # one episode ends after two calls: the others are not kept waiting for it beyond the patience
    t0 = time.perf_counter()
    fewer = _clients(batchers[2], delays, [2, 6, 6, 6])
    assert sum(fewer) == 20 and fewer.count(3) >= 3 and time.perf_counter() - t0 < 3.0, fewer
    # a lone episode is never made to wait for others
    t0 = time.perf_counter()
    lone = _clients(batchers[3], [0.01], [5])
    assert lone == [1] * 5 and time.perf_counter() - t0 < 1.0
    for b in batchers:
        b.close()
    from agentdistill.models.batching import BatcherClosed, Request

    with pytest.raises(BatcherClosed):  # refused at once, never queued where no worker would answer it
        batchers[0].submit(Request([{"role": "user", "content": "late"}], 1, 0.0, 4, ()))


def test_the_prefix_cache_keeps_to_its_memory_budget_least_recently_used_first():
    import torch

    from agentdistill.models.prefix_cache import PrefixCache

    def kv(n):  # 2 layers, 1 head, 4 dims: 64 bytes a token
        return [(torch.zeros(1, n, 4), torch.zeros(1, n, 4)) for _ in range(2)]

    cache = PrefixCache(max_bytes=64 * 50, min_tokens=3)
    cache.store([1, 2, 3, 4, 5], kv(5))
    cache.store([1, 2, 9, 9], kv(4))
    assert cache.match([1, 2, 3, 4, 5, 6])[1] == 5
    assert cache.match([1, 2, 3, 4, 5])[1] == 4  # one token is always left to prefill
    assert cache.match([1, 2, 7])[1] == 0  # 2 shared tokens: under min_tokens
    cache.store([1, 2, 3, 4, 5, 6, 7], kv(7))  # extends the first: replaces it
    assert len(cache) == 2 and cache._bytes == 64 * 11
    cache.match([1, 2, 9, 9, 1])  # used: now the most recent
    cache.store([8] * 40, kv(40))  # 51 tokens in all: the least recently used goes
    assert [len(k) for k in cache._entries] == [4, 40] and cache._bytes == 64 * 44
    cache.store([1, 2, 9, 9] + [7] * 56, kv(60))  # larger than the whole budget: not kept, and the prompt
    assert [len(k) for k in cache._entries] == [4, 40]  # it extends is kept on (a later one may still use it)


def test_the_prefix_cache_is_used_only_where_padding_cannot_change_attention():
    from types import SimpleNamespace as NS

    from agentdistill.models.prefix_cache import supports

    dense = NS(config=NS(), generation_config=NS(cache_implementation=None))
    assert supports(dense)
    assert not supports(NS(config=NS(sliding_window=4096), generation_config=NS(cache_implementation=None)))
    assert supports(NS(config=NS(sliding_window=4096, use_sliding_window=False), generation_config=NS(cache_implementation=None)))
    assert not supports(NS(config=NS(layer_types=["full_attention", "sliding_attention"]), generation_config=NS(cache_implementation=None)))
    assert not supports(NS(config=NS(), generation_config=NS(cache_implementation="static")))
    assert supports(LocalModel("local/smollm2-135m").model)  # Llama-style SmolLM2: full attention


def test_released_models_free_their_weights_and_end_their_batcher():
    """A pipeline releases in-process models after each stage (each eval arm loads its own checkpoint): the
    weights go, the batcher's thread ends, and a model asked for again loads and answers the same."""
    import gc
    import threading
    import weakref

    from agentdistill.models.local import default_dtype
    from agentdistill.models.registry import make_model, release_in_process_models

    # a dtype the module's other models do not use: nothing else holds these weights
    dtype = "float32" if default_dtype() == "bfloat16" else "bfloat16"
    release_in_process_models()  # what earlier tests loaded: this test's weights are loaded afresh below
    before = set(threading.enumerate())
    model = make_model("local/smollm2-135m", dtype=dtype)
    answer = model.complete(CHATS[0], max_tokens=6)[0].text
    weights = weakref.ref(model.model)
    (batcher,) = [t for t in set(threading.enumerate()) - before if t.name == "agentdistill-engine"]
    assert make_model("local/smollm2-135m", dtype=dtype) is model  # kept while in use
    del model
    release_in_process_models()
    batcher.join(10)
    gc.collect()
    assert not batcher.is_alive() and weights() is None
    again = make_model("local/smollm2-135m", dtype=dtype)
    assert again.complete(CHATS[0], max_tokens=6)[0].text == answer
    release_in_process_models()


def test_only_a_model_running_sdpa_is_made_batch_invariant():
    """Per-row attention replaces SDPA only: a model on another attention (eager, flash) keeps its own."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from agentdistill.models.batch_invariance import NAME, make_batch_invariant

    config = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
    eager = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="eager"))
    assert not make_batch_invariant(eager) and eager.config._attn_implementation == "eager"
    sdpa = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).eval()
    ids = torch.tensor([[0, 0, 5, 9, 3], [7, 1, 2, 4, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.inference_mode():
        before = sdpa(input_ids=ids, attention_mask=mask).logits
        assert make_batch_invariant(sdpa) and sdpa.config._attn_implementation == NAME
        after = sdpa(input_ids=ids, attention_mask=mask).logits
    # the same model: per-row attention moves a real position's logits by rounding only
    assert torch.allclose(before[0, 2:], after[0, 2:], atol=1e-5) and torch.allclose(before[1], after[1], atol=1e-5)


def test_bf16_is_picked_on_a_cpu_only_with_amx(monkeypatch):
    """AVX512-BF16 alone computes bf16 no faster than fp32 (measured: fp32 trained 1.45x and prefilled 1.6x
    faster there), so a CPU gets bf16, for inference and for training, only with AMX."""
    from agentdistill.models import local
    from agentdistill.train.model import Hardware

    for flags, bf16 in [({"avx512f", "avx512_bf16", "avx512_vnni"}, False), ({"avx2", "fma"}, False),
                        ({"avx512_bf16", "amx_tile", "amx_bf16"}, True)]:
        monkeypatch.setattr(local, "cpu_flags", lambda flags=flags: flags)
        assert local.native_bf16("cpu") is bf16 and Hardware.pick("cpu").bf16 is bf16


def test_every_in_process_model_generates_on_one_thread():
    """Two checkpoints (two batchers) and an unbatched model all run their forward passes on the same thread,
    so torch keeps one OpenMP pool: with a pool per batcher thread, the first model decoded 21 tokens/s instead
    of 27 once the second had generated (libgomp stops spin-waiting once it has more threads than cores)."""
    import threading

    from agentdistill.models.engine import Engine
    from agentdistill.openmp import on_the_generation_thread

    models = [LocalModel("local/smollm2-135m", dtype="float32"), LocalModel("local/smollm2-135m", dtype="bfloat16"),
              LocalModel("local/smollm2-135m", dtype="float32", batching=False)]
    assert models[0]._loaded is not models[1]._loaded  # two checkpoints in memory, each with its engine
    ran_on, original = [], Engine._step
    Engine._step = lambda self, *a: ran_on.append(threading.current_thread()) or original(self, *a)
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: models[i % 3].complete(CHATS[i % 5], max_tokens=4), range(6)))
    finally:
        Engine._step = original
    assert len(ran_on) >= 3 and len(set(ran_on)) == 1 and ran_on[0].name == "agentdistill-generate"
    assert ran_on[0] is not threading.current_thread()
    # called from that thread (a model's forward pass asking another), it runs in place instead of waiting on itself
    assert on_the_generation_thread(on_the_generation_thread, threading.current_thread) is ran_on[0]
