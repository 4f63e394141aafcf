import pytest
import torch

from core.records import Batch, Sample
from core.registry import lookup
from tasks.datasets import PromptStream, ToyDataset
from tasks.toy_arith import ToyArithmetic, check_steps, extract_answer, scratchpad


def test_scratchpad_has_one_step_per_column_with_carries():
    assert scratchpad([347, 285]) == "7+5=12;4+8+1=13;3+2+1=6;#632"
    assert scratchpad([95, 7]) == "5+7=12;9+0+1=10;#102"


def test_answer_extraction_and_step_checker():
    assert extract_answer("7+5=12;#632") == 632
    assert extract_answer("7+5=12;632") is None
    assert extract_answer("#6x2") is None
    assert check_steps("347+285=", "7+5=12;4+8+1=13;3+2+1=6;#632") == [True, True, True]
    assert check_steps("347+285=", "7+5=12;4+8=12;3+2+1=6;#622") == [True, False, True]
    assert check_steps("5+5=", "5+5=10;0+0+1=1;#10") == [True, False]


def test_problems_are_a_pure_function_of_seed_split_index():
    a, b = ToyArithmetic(1, 3, seed=7), ToyArithmetic(1, 3, seed=7)
    assert a.problem("train", 5) == b.problem("train", 5)
    assert a.problem("train", 5) != a.problem("test", 5)
    p = a.problem("train", 5)
    assert extract_answer(p.solution) == p.answer == eval(p.prompt.rstrip("="))


def test_prompt_stream_resumes_where_it_stopped():
    data = [ToyDataset(ToyArithmetic(seed=0), "x")[i] for i in range(10)]

    class Listed(list):
        def __len__(self):
            return super().__len__()

    stream = PromptStream(Listed(data), seed=3)
    first = [p.prompt_id for p in stream.next(7)]
    state = stream.state_dict()
    rest = [p.prompt_id for p in stream.next(8)]
    again = PromptStream(Listed(data), seed=3)
    again.load_state_dict(state)
    assert [p.prompt_id for p in again.next(8)] == rest
    assert sorted(first + rest[:3]) == sorted(p.prompt_id for p in data)  # one full epoch


def test_batch_layout_left_pads_prompts_and_right_pads_responses():
    s1 = Sample("p", "g", [1, 2, 3], [4, 5], [-0.1, -0.2], 0)
    s2 = Sample("q", "g", [6], [7, 8, 9], [-0.3, -0.4, -0.5], 0, loss_mask=[1, 0, 1])
    b = Batch.from_samples([s1, s2], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 0], [0, 0, 6, 7, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 0, 1]]
    assert torch.allclose(b.behaviour_logprobs[1], torch.tensor([-0.3, -0.4, -0.5]))
    assert b.select(slice(0, 1)).trimmed().input_ids.tolist() == [[1, 2, 3, 4, 5]]


def test_registry_finds_names_and_dotted_paths():
    assert lookup("reward", "toy_exact").__name__ == "toy_exact"
    assert lookup("reward", "tests.reward_fns.length_bonus").__name__ == "length_bonus"
    with pytest.raises(KeyError, match="registered: .*toy_exact"):
        lookup("reward", "no_such_reward")
