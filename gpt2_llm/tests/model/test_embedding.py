"""model/embedding.py: the token table's GPT-2 initialisation, and its second use as the tied output head.

(Looking rows up is F.embedding, PyTorch's to test; what is ours is the init and the tying.)
"""
import torch

from gpt2_llm.gpt2 import GPT2
from gpt2_llm.model.embedding import TokenEmbedding


def test_init_is_gpt2_normal():
    torch.manual_seed(0)
    emb = TokenEmbedding(1000, 64)
    assert abs(emb.weight.std().item() - 0.02) < 0.001
    assert abs(emb.weight.mean().item()) < 0.001
    assert repr(emb) == "TokenEmbedding(1000, 64)"


def test_the_head_is_the_table_and_learns_from_both_uses():
    """One Parameter: the head's gradient and the lookup's add up in it, and it is counted once."""
    torch.manual_seed(0)
    model = GPT2(vocab_size=20, embedding_dim=8, num_layers=1, num_heads=2, max_seq_len=8)
    assert model.lm_head.weight is model.wte.weight
    stored = sum(t.numel() for t in model.state_dict().values())  # lists the table under both names
    assert model.num_parameters() == stored - 20 * 8
    x = torch.tensor([[1, 2, 3]])
    model.loss(x, torch.tensor([[4, 5, 6]])).backward()
    both = model.wte.weight.grad.clone()

    model.zero_grad()
    h = model.hidden_states(x)  # the lookup's path only: detach the head's use of the table
    loss = torch.nn.functional.cross_entropy((h @ model.wte.weight.detach().T).view(-1, 20), torch.tensor([4, 5, 6]))
    loss.backward()
    lookup_only = model.wte.weight.grad.clone()
    assert lookup_only[[0, 7, 19]].abs().sum() == 0  # ids never looked up get no gradient from the lookup ...
    assert both[[0, 7, 19]].abs().sum() > 0  # ... but do from the head, which scores every id
    assert not torch.allclose(both, lookup_only)
