import pytest
import torch
import torch.nn.functional as F

from autoal.nets import models
from autoal.errors import AutoALError


@pytest.mark.parametrize("name,shape", [("mlp", (16,)), ("cnn", (1, 8, 8)), ("resnet18", (3, 32, 32)),
                                         ("resnet18", (1, 28, 28))])
def test_every_model_gives_logits_embedding_taps_and_predicted_loss(name, shape):
    torch.manual_seed(0)
    net = models.build(name, shape, outputs=5, dropout=0.3)
    x = torch.rand(4, *shape)
    logits, pred_loss, clean = net(x)
    assert clean.shape == logits.shape
    embedding, taps = net.features(x)
    assert logits.shape == (4, 5) and pred_loss.shape == (4,)
    assert embedding.shape == (4, net.backbone.embed_dim)
    assert [t.shape[1] for t in taps] == list(net.backbone.tap_channels)


def test_mc_dropout_samples_differ_but_eval_prediction_is_deterministic():
    torch.manual_seed(0)
    net = models.build("cnn", (1, 8, 8), outputs=10, dropout=0.3).eval()
    x = torch.rand(3, 1, 8, 8)
    embedding, _ = net.features(x)
    samples = net.head.sample(embedding, 8).softmax(2)
    assert samples.shape == (3, 8, 10)
    assert (samples.std(1) > 1e-4).any(), "MC dropout samples must differ"
    assert torch.equal(net(x)[0], net(x)[0]), "eval-mode prediction has no dropout"


def test_auto_picks_a_backbone_from_the_data_shape():
    assert models.resolve("auto", (64,)) == "mlp"
    assert models.resolve("auto", (1, 8, 8)) == "cnn"
    assert models.resolve("auto", (3, 32, 32)) == "resnet18"


def test_resnet18_keeps_the_cifar_stem():
    net = models.build("resnet18", (1, 28, 28), outputs=11)
    conv = net.backbone.stem[0]
    assert conv.in_channels == 1 and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert net.features(torch.rand(2, 1, 28, 28))[1][0].shape[-1] == 28  # no max-pool, no stride


@pytest.mark.parametrize("name,shape,message", [("vgg", (1, 8, 8), "unknown model"),
                                                ("cnn", (16,), "needs images")])
def test_bad_model_choice_is_a_clear_error(name, shape, message):
    with pytest.raises(AutoALError, match=message):
        models.resolve(name, shape)


def test_loss_ranking_penalises_the_wrong_order_only():
    target = torch.tensor([2.0, 0.0])
    right, wrong = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    assert models.loss_ranking(right, target) == 0
    assert models.loss_ranking(wrong, target) == pytest.approx(4.0)


def test_loss_module_target_does_not_depend_on_the_dropout_mask():
    """Two dropout masks, one batch: the ranking loss's gradient on the loss module is the same
    (it ranks the dropout-free loss; the dropout head's loss would move with the mask)."""
    torch.manual_seed(0)
    net = models.build("cnn", (1, 8, 8), 10, dropout=0.5).train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    grads, noisy = [], []
    for mask_seed in (1, 2):
        torch.manual_seed(mask_seed)
        logits, pred_loss, clean = net(x)
        assert not torch.equal(logits, clean)            # the head's dropout is on
        noisy.append(F.cross_entropy(logits, y, reduction="none"))
        net.zero_grad()
        models.loss_ranking(pred_loss, F.cross_entropy(clean.detach(), y, reduction="none")).backward()
        grads.append(net.loss_head.out.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert not torch.equal(noisy[0], noisy[1]), "the dropout head's loss does move with the mask"
