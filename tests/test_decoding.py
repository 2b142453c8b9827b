"""The generation engine (tinythinker.decoding): greedy texts equal model.generate's, caps, sampling, sizing."""

from __future__ import annotations

import pytest
import torch

from helpers_data import TOY_QUESTIONS, all_texts, stage_records
from tinythinker import protocol
from tinythinker.decoding import bytes_per_row, generate_ids, plain_generate_ids, plan_batches
from tinythinker.students import Student, make_tiny_student

KINDS = ("seq2seq", "causal")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=KINDS)
def untrained(request, tmp_path_factory) -> Student:
    folder = make_tiny_student(request.param, all_texts(), tmp_path_factory.mktemp("untrained") / request.param, seed=5)
    return Student.load(folder, device="cpu")


def stage_prompts() -> list[str]:
    """Every toy stage prompt plus cut ones: lengths from a few tokens to whole summaries, and
    continuations that stop at different steps (or run to the cap)."""
    prompts = [prompt for prompt, _ in stage_records()]
    cut = [prompt[: len(prompt) // 2] for prompt in prompts[::3]]
    return prompts + cut + ["Recall:", protocol.recall_prompt(TOY_QUESTIONS[0].text)]


@pytest.mark.parametrize("batch_size", [None, 1, 5])
def test_greedy_texts_equal_model_generate(trained, batch_size):
    ids = trained.tokenize_prompts(stage_prompts())
    plain = plain_generate_ids(trained, ids, max_new_tokens=40, batch_size=64)
    engine = generate_ids(trained, ids, max_new_tokens=40, batch_size=batch_size)
    assert engine == plain
    lengths = {len(trained.tokenizer(t[0])["input_ids"]) for t in engine}
    assert len(lengths) > 3  # rows really finished at different steps


def test_greedy_texts_equal_model_generate_untrained(untrained):
    ids = untrained.tokenize_prompts(stage_prompts())
    assert generate_ids(untrained, ids, max_new_tokens=12) == plain_generate_ids(untrained, ids, max_new_tokens=12, batch_size=7)


def test_max_new_tokens_is_a_cap(untrained, trained):
    ids = untrained.tokenize_prompts(stage_prompts()[:6])
    for cap in (1, 3):
        for row in generate_ids(untrained, ids, max_new_tokens=cap):
            generated = untrained.tokenizer(row[0], add_special_tokens=False)["input_ids"]
            assert len(generated) <= cap + 1  # a text re-tokenises to about the tokens it came from
    short = generate_ids(trained, trained.tokenize_prompts([protocol.recall_prompt(TOY_QUESTIONS[0].text)]), max_new_tokens=2)
    full = generate_ids(trained, trained.tokenize_prompts([protocol.recall_prompt(TOY_QUESTIONS[0].text)]), max_new_tokens=40)
    assert full[0][0] == TOY_QUESTIONS[0].recall and full[0][0].startswith(short[0][0]) and len(short[0][0]) < len(full[0][0])
    assert generate_ids(trained, trained.tokenize_prompts(["x"]), max_new_tokens=0) == [[""]]


def test_empty_input(trained):
    assert generate_ids(trained, [], max_new_tokens=5) == []
    assert trained.generate([], max_new_tokens=5) == []
    assert generate_ids(trained, [], max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=1) == []


def test_sampling_is_seeded_and_honours_num_return_sequences(untrained):
    ids = untrained.tokenize_prompts(stage_prompts()[:7])

    def sample(seed, **settings):
        return generate_ids(untrained, ids, max_new_tokens=8, do_sample=True, temperature=1.0, num_return_sequences=3,
                            seed=seed, **settings)

    first = sample(1)
    assert [len(row) for row in first] == [3] * len(ids)
    assert sample(1) == first  # same seed and settings: same texts
    assert sample(2) != first
    assert len({text for row in first for text in row}) > len(ids)  # the samples of a prompt differ
    before = torch.random.get_rng_state()
    sample(1, batch_size=6)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state is untouched
    assert sample(1, batch_size=6) == sample(1, batch_size=6)
    # no seed: drawn from torch's global generator, so new texts on every call, the same after torch.manual_seed
    torch.manual_seed(7)
    unseeded = sample(None)
    assert sample(None) != unseeded
    torch.manual_seed(7)
    assert sample(None) == unseeded


def test_top_k_one_and_cold_temperature_are_greedy(trained):
    ids = trained.tokenize_prompts(stage_prompts())
    greedy = generate_ids(trained, ids, max_new_tokens=40)
    assert generate_ids(trained, ids, max_new_tokens=40, do_sample=True, top_k=1, seed=3) == greedy
    assert generate_ids(trained, ids, max_new_tokens=40, do_sample=True, temperature=1e-4, seed=3) == greedy
    hot = generate_ids(trained, ids, max_new_tokens=40, do_sample=True, temperature=5.0, seed=3)
    assert hot != greedy


def test_settings_are_checked(trained):
    ids = trained.tokenize_prompts(["x"])
    with pytest.raises(ValueError, match="do_sample"):
        generate_ids(trained, ids, num_return_sequences=2)
    with pytest.raises(ValueError, match="temperature"):
        generate_ids(trained, ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate_ids(trained, ids, num_return_sequences=0)


def test_batches_follow_the_budget(untrained):
    lengths = [50, 40, 40, 10, 10, 10]
    order = list(range(6))
    by_count = plan_batches(lengths, order, n=2, max_new_tokens=5, batch_size=4, row_bytes=lambda w: 1, budget=10**9)
    assert by_count == [[0, 1], [2, 3], [4, 5]]
    by_budget = plan_batches(lengths, order, n=1, max_new_tokens=5, batch_size=None, row_bytes=lambda w: w, budget=100)
    assert by_budget == [[0, 1], [2, 3], [4, 5]]  # the longest prompt of a batch sets its width
    assert plan_batches([10**6], [0], n=4, max_new_tokens=5, batch_size=None, row_bytes=lambda w: w, budget=1) == [[0]]
    small = bytes_per_row(untrained.model, 20, 10)
    assert 0 < small < bytes_per_row(untrained.model, 200, 10) < bytes_per_row(untrained.model, 200, 100)
    ids = untrained.tokenize_prompts(stage_prompts())
    tight = generate_ids(untrained, ids, max_new_tokens=6, memory_budget=small * 3)
    assert tight == generate_ids(untrained, ids, max_new_tokens=6)


def test_on_batch_follows_every_prompt_once(trained):
    ids = trained.tokenize_prompts(stage_prompts())
    seen: list[int] = []
    spent: list[float] = []

    def on_batch(indices, seconds):
        seen.extend(indices)
        spent.append(seconds)

    generate_ids(trained, ids, max_new_tokens=40, on_batch=on_batch)
    assert sorted(seen) == list(range(len(ids)))
    assert all(s >= 0 for s in spent) and sum(spent) > 0


def test_plain_path_and_checkpoints_it_needs(trained):
    ids = trained.tokenize_prompts(stage_prompts()[:5])
    assert trained.generate_ids(ids, max_new_tokens=20, plain=True) == trained.generate_ids(ids, max_new_tokens=20)
    trained.model.generation_config.forced_eos_token_id = trained.tokenizer.eos_token_id
    try:  # a processor the lean loop lacks: model.generate decodes instead (same texts here: all end in eos)
        assert trained.generate_ids(ids, max_new_tokens=20) == plain_generate_ids(trained, ids, max_new_tokens=20)
    finally:
        trained.model.generation_config.forced_eos_token_id = None


def test_sampling_draws_from_the_tempered_top_k_softmax():
    from tinythinker.decoding import _choose

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]]).repeat(40000, 1)
    generator = torch.Generator().manual_seed(0)
    draws = _choose(logits, True, 0.5, 0, generator)
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(frequencies, torch.softmax(logits[0] / 0.5, -1), atol=0.01)
    draws = _choose(logits, True, 1.0, 2, generator)  # top-k 2: only the two best tokens, in their odds
    assert set(draws.tolist()) == {0, 4}
    assert (draws == 4).float().mean().item() == pytest.approx(torch.softmax(torch.tensor([2.0, 3.0]), -1)[1].item(), abs=0.01)
    assert torch.equal(_choose(logits[:3], False, 1.0, 0, None), torch.tensor([4, 4, 4]))


def test_causal_analyze_prompts_share_their_prefix_and_keep_their_texts(trained, monkeypatch):
    import tinythinker.decoding as decoding

    prompts = [protocol.analyze_prompt(q.text, x, q.recall) for q in TOY_QUESTIONS for x in q.letters]
    ids = trained.tokenize_prompts(prompts)
    rows = sorted(ids, key=len, reverse=True)
    if not trained.is_seq2seq:
        assert decoding.shared_suffix(rows) == len(trained.tokenizer(" A,", add_special_tokens=False)["input_ids"])
    assert decoding.shared_suffix(sorted(trained.tokenize_prompts([q.text for q in TOY_QUESTIONS]), key=len, reverse=True)) == 0
    plain = plain_generate_ids(trained, ids, max_new_tokens=30)
    assert generate_ids(trained, ids, max_new_tokens=30) == plain
    monkeypatch.setattr(decoding, "SHARE_PREFIXES", False)
    assert generate_ids(trained, ids, max_new_tokens=30) == plain
    sampled = dict(max_new_tokens=30, do_sample=True, num_return_sequences=2, seed=4)
    monkeypatch.setattr(decoding, "SHARE_PREFIXES", True)
    assert generate_ids(trained, ids, **sampled) == generate_ids(trained, ids, **sampled)


# --- what the engine expects of transformers (a release that changes it fails here first) ----------------

# every field of the installed transformers' GenerationConfig: a release that adds one fails this test, so that
# it is read and classified in tinythinker.decoding (until then a checkpoint that sets it goes to model.generate)
GENERATION_FIELDS = {
    "_from_model_config", "assistant_confidence_threshold", "assistant_early_exit", "assistant_ensemble_weight",
    "assistant_lookbehind", "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "cache_config", "cache_implementation",
    "compile_config", "constraints", "continuous_batching_config", "decoder_start_token_id", "disable_compile",
    "diversity_penalty", "do_sample", "dola_layers", "early_stopping", "encoder_no_repeat_ngram_size",
    "encoder_repetition_penalty", "eos_token_id", "epsilon_cutoff", "eta_cutoff", "exponential_decay_length_penalty",
    "force_words_ids", "forced_bos_token_id", "forced_eos_token_id", "guidance_scale", "is_assistant", "length_penalty",
    "low_memory", "max_cache_len", "max_length", "max_matching_ngram_size", "max_new_tokens", "max_time", "min_length",
    "min_new_tokens", "min_p", "no_repeat_ngram_size", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions", "output_hidden_states", "output_logits",
    "output_scores", "pad_token_id", "penalty_alpha", "prefill_chunk_size", "prompt_lookup_num_tokens",
    "remove_invalid_values", "renormalize_logits", "repetition_penalty", "return_dict_in_generate", "sequence_bias",
    "speculation_type", "stop_strings", "suppress_tokens", "target_lookbehind", "temperature", "token_healing", "top_h",
    "top_k", "top_p", "transformers_version", "typical_p", "use_cache", "use_mtp", "watermarking_config",
}


def test_the_engine_contract_holds_for_the_installed_transformers():
    from transformers import GenerationConfig

    from tinythinker.decoding import ENGINE_FIELDS, IGNORED_FIELDS, IGNORED_WHEN_SAMPLING, engine_contract

    assert engine_contract() is None
    assert set(GenerationConfig().to_dict()) == GENERATION_FIELDS
    handled = ENGINE_FIELDS | set(IGNORED_FIELDS) | set(IGNORED_WHEN_SAMPLING)
    assert handled <= GENERATION_FIELDS  # no stale names


def test_a_field_the_engine_does_not_implement_sends_the_checkpoint_to_model_generate(untrained):
    from tinythinker.decoding import plain_only

    config = untrained.model.generation_config
    assert plain_only(untrained.model) is None
    for name, value in (("min_new_tokens", 3), ("stop_strings", ["."]), ("top_h", 0.5), ("some_later_field", 1)):
        setattr(config, name, value)
        try:
            assert plain_only(untrained.model) == name
        finally:
            delattr(config, name) if name == "some_later_field" else setattr(config, name, None)
    for name, value in (("encoder_no_repeat_ngram_size", 2), ("repetition_penalty", 1.3), ("min_p", 0.2), ("num_beams", 4)):
        setattr(config, name, value)  # ignored by both paths: the call decides the decoding
        try:
            assert plain_only(untrained.model) is None
            ids = untrained.tokenize_prompts(stage_prompts()[:3])
            assert generate_ids(untrained, ids, max_new_tokens=6) == plain_generate_ids(untrained, ids, max_new_tokens=6)
        finally:
            setattr(config, name, None)


def test_a_transformers_without_the_cache_internals_decodes_with_model_generate_and_one_warning(untrained, monkeypatch, caplog):
    """A later release without DynamicCache.layer_class_to_replicate (emulated: the class replaced): the same texts
    as model.generate, and one warning line however many calls."""
    import transformers

    from tinythinker import decoding

    class ChangedCache(transformers.DynamicCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__.pop("layer_class_to_replicate", None)

    ids = untrained.tokenize_prompts(stage_prompts()[:3])
    expected = plain_generate_ids(untrained, ids, max_new_tokens=6)
    monkeypatch.setattr(transformers, "DynamicCache", ChangedCache)
    decoding.engine_contract.cache_clear()
    monkeypatch.setattr(decoding, "_warned", set())
    try:
        with caplog.at_level("WARNING", logger="tinythinker"):
            assert [generate_ids(untrained, ids, max_new_tokens=6) for _ in range(2)] == [expected, expected]
        assert [r.getMessage() for r in caplog.records] == [
            "the generation engine cannot run with this transformers release (transformers' cache has no "
            "layer_class_to_replicate); decoding with model.generate instead (the same texts, slower)"]
    finally:
        monkeypatch.undo()
        decoding.engine_contract.cache_clear()
    assert decoding.engine_contract() is None
