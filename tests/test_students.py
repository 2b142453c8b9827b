"""Student: loading by config (not name), training batches, scoring, generation; tiny students."""

from __future__ import annotations

import pytest
import torch

from helpers_data import TOY_QUESTIONS, all_texts
from tinythinker import protocol
from tinythinker.errors import TinyThinkerError
from tinythinker.students import IGNORE_INDEX, Student, make_tiny_student

KINDS = ("seq2seq", "causal")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=KINDS)
def untrained(request, tmp_path_factory) -> Student:
    folder = make_tiny_student(request.param, all_texts(), tmp_path_factory.mktemp("students") / request.param, seed=1)
    return Student.load(folder, device="cpu")


def test_kind_comes_from_the_config_and_the_checkpoint_reloads(untrained, tmp_path):
    assert untrained.is_seq2seq == untrained.model.config.is_encoder_decoder
    untrained.save(tmp_path / "copy")
    again = Student.load(tmp_path / "copy", device="cpu")
    assert again.is_seq2seq == untrained.is_seq2seq
    batch = untrained.encode(["What is red?\n(A) a (B) b\nRecall:"], ["Red is a color."])
    untrained.model.eval()
    assert torch.allclose(untrained.target_logprobs(batch), again.target_logprobs(batch), atol=1e-5)


def test_tokenizer_round_trips_and_keeps_option_markers(untrained):
    tokenizer = untrained.tokenizer
    text = TOY_QUESTIONS[0].text + "\nRecall: It's 3.5 \"quoted\" — é.\nSummarize:"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert "(A)" in tokens and ":" in tokens and "." in tokens
    assert {tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token} == {"<pad>", "</s>", "<unk>"}


def test_encode_counts_only_target_tokens(untrained):
    prompts = [protocol.recall_prompt(q.text) for q in TOY_QUESTIONS[:2]]
    targets = [q.recall for q in TOY_QUESTIONS[:2]]
    batch = untrained.encode(prompts, targets)
    eos, pad = untrained.tokenizer.eos_token_id, untrained.tokenizer.pad_token_id
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        labels = [t for t in batch["labels"][row].tolist()]
        counted = [t for t in labels if t != IGNORE_INDEX]
        assert counted[-1] == eos and counted.count(eos) == 1
        assert untrained.tokenizer.decode(counted, skip_special_tokens=True).strip() == target
        if untrained.is_seq2seq:  # encoder holds the prompt, decoder labels only the target
            ids = [t for t, m in zip(batch["input_ids"][row].tolist(), batch["attention_mask"][row].tolist()) if m]
            assert untrained.tokenizer.decode(ids, skip_special_tokens=True) == prompt
        else:  # one sequence: prompt positions masked, target positions labelled with their own ids
            ids = batch["input_ids"][row].tolist()
            n_prompt = len(untrained.tokenizer(prompt)["input_ids"])
            assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
            assert untrained.tokenizer.decode(ids[:n_prompt]) == prompt
            target_positions = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
            assert target_positions == list(range(n_prompt, n_prompt + len(counted)))
            assert [ids[i] for i in target_positions] == counted
            padded = batch["attention_mask"][row] == 0
            assert (batch["input_ids"][row][padded] == pad).all()
            assert (batch["labels"][row][padded] == IGNORE_INDEX).all()


def test_encode_cuts_no_input_unless_asked_and_then_keeps_its_end(untrained):
    prompt = " ".join(["filler"] * 300) + "\nAnalyze: For option B,"
    whole = untrained.encode([prompt], ["A clear sky is blue."], max_length=40)
    assert whole["input_ids"].shape[1] > 300  # the reference cuts no SFT input
    assert untrained.count_long_inputs([prompt, "short"], 200) == 1
    batch = untrained.encode([prompt], ["A clear sky is blue."], max_length=40, max_input_length=30)
    prompt_tokens = int((batch["labels"][0] == IGNORE_INDEX).sum()) if not untrained.is_seq2seq else batch["input_ids"].shape[1]
    assert prompt_tokens <= 30 + (0 if untrained.is_seq2seq else 1)
    ids = batch["input_ids"][0].tolist()
    kept = untrained.tokenizer.decode(ids, skip_special_tokens=True)
    assert "Analyze: For option B," in kept  # the end of the stage input survives


def test_sampling_with_top_k_0_is_not_cut_to_top_50(untrained):
    """top_k=0 means no cut: transformers would fill None with its default 50 (or the checkpoint's)."""
    untrained.model.generation_config.top_k = 3  # a checkpoint's own setting must not leak in either
    prompt = protocol.recall_prompt(TOY_QUESTIONS[0].text)
    firsts = untrained.generate([prompt], max_new_tokens=1, do_sample=True, temperature=1000.0, top_k=0,
                                num_return_sequences=400, batch_size=400, seed=1)[0]
    assert len(set(firsts)) > 60  # uniform over the vocabulary gives far more than a top-50 cut allows


def test_target_logprobs_is_the_negative_summed_loss(untrained):
    untrained.model.eval()
    batch = untrained.encode([protocol.recall_prompt(TOY_QUESTIONS[1].text)], [TOY_QUESTIONS[1].recall])
    with torch.no_grad():
        loss = untrained.model(**batch).loss  # mean over counted tokens
    counted = (batch["labels"] != IGNORE_INDEX).sum() - (0 if untrained.is_seq2seq else int(batch["labels"][0, 0] != IGNORE_INDEX))
    assert torch.allclose(untrained.target_logprobs(batch), -loss * counted, atol=1e-4)


def test_sampling_is_reproducible_with_a_seed(untrained):
    prompts = [protocol.recall_prompt(q.text) for q in TOY_QUESTIONS]
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=1.0, num_return_sequences=3)
    first = untrained.generate(prompts, seed=7, **kwargs)
    assert untrained.generate(prompts, seed=7, **kwargs) == first
    assert untrained.generate(prompts, seed=8, **kwargs) != first
    assert [len(runs) for runs in first] == [3] * len(prompts)


def test_generation_leaves_global_random_state_alone(untrained):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    untrained.generate(["x\nRecall:"], max_new_tokens=4, do_sample=True, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_greedy_needs_one_sequence(untrained):
    with pytest.raises(ValueError, match="do_sample"):
        untrained.generate(["x"], num_return_sequences=2)


def test_trained_student_continues_the_prompt_only(trained):
    q = TOY_QUESTIONS[2]
    prompts = [protocol.recall_prompt(q.text), protocol.analyze_prompt(q.text, "C", q.recall)]
    assert trained.generate(prompts, max_new_tokens=24) == [[q.recall], ["Scissors have sharp blades."]]
    # greedy text does not depend on batching or padding (causal prompts are left-padded)
    assert trained.generate(prompts, max_new_tokens=24, batch_size=1) == [[q.recall], ["Scissors have sharp blades."]]


def test_bf16_autocast_generates(trained):
    trained.bf16 = True
    try:
        out = trained.generate([protocol.recall_prompt(TOY_QUESTIONS[0].text)], max_new_tokens=24)
    finally:
        trained.bf16 = False
    assert len(out) == 1 and isinstance(out[0][0], str)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(TinyThinkerError, match="no such student folder"):
        Student.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyThinkerError, match="no config.json"):
        Student.load(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(TinyThinkerError, match="cannot load"):
        Student.load(tmp_path / "broken")


def test_make_tiny_student_rejects_bad_arguments(tmp_path):
    with pytest.raises(TinyThinkerError, match="unknown student kind"):
        make_tiny_student("encoder", ["a b c"], tmp_path / "x")
    with pytest.raises(TinyThinkerError, match="no texts"):
        make_tiny_student("causal", [], tmp_path / "y")


def test_t5_small_shape(tmp_path):
    from transformers import AutoConfig

    texts = [protocol.recall_prompt(q.text) for q in TOY_QUESTIONS]
    config = AutoConfig.from_pretrained(make_tiny_student("seq2seq", texts, tmp_path / "t5", shape="t5-small"))
    assert (config.d_model, config.num_layers, config.num_decoder_layers, config.num_heads, config.d_ff, config.vocab_size) == (
        512, 6, 6, 8, 2048, 32128)
