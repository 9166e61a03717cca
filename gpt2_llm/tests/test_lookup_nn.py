import torch

from gpt2_llm.lookup_nn import TokenEmbedding


def test_lookup_returns_rows_of_the_table():
    emb = TokenEmbedding(10, 4)
    idx = torch.tensor([[3, 0, 3], [9, 1, 2]])
    out = emb(idx)
    assert out.shape == (2, 3, 4)
    assert torch.equal(out[0, 0], emb.weight[3])
    assert torch.equal(out[0, 0], out[0, 2])


def test_gradient_reaches_only_the_rows_looked_up():
    emb = TokenEmbedding(10, 4)
    emb(torch.tensor([[1, 5]])).sum().backward()
    touched = emb.weight.grad.abs().sum(dim=1) != 0
    assert touched.nonzero().flatten().tolist() == [1, 5]


def test_init_is_gpt2_normal():
    torch.manual_seed(0)
    emb = TokenEmbedding(1000, 64)
    assert abs(emb.weight.std().item() - 0.02) < 0.001
    assert abs(emb.weight.mean().item()) < 0.001
