"""Tests for evaluate.py: every metric pinned on tiny tensors against values computed by hand (or by a formula
written out here, apart from the code under test), then run folders -> tables, figures and the CLI.

Sources: Monodepth2's evaluate_depth.py (Eigen et al.'s errors and accuracies, the Garg crop, the 1e-3..80 m
cap, median scaling), the minimal-transfer-learning paper Sect. 2.3 (SILog, SI-RMSE), the depth pre-training
paper App. B.2 (mIoU over 7 representative classes) and KITTI 2015's Fl outlier rule (EPE > 3 px and > 5 %)."""
import inspect
import json
import logging
import math
import shutil
import statistics
import sys
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
from conftest import kitti_test_frames  # noqa: E402

# ---------------------------------------------------------------- segmentation

# 2x4 image, 3 classes present (K = 4, class 3 absent); the last column is ignored.
LABEL = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])


def test_confusion_matrix_counts_gt_rows_against_prediction_columns_and_skips_ignored_pixels():
    # kept (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0); the two ignored pixels predict 2 and 0
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    confusion = evaluate.confusion_matrix(PRED, LABEL, num_classes=4)
    assert confusion.dtype == torch.int64 and confusion.device.type == 'cpu'
    assert torch.equal(confusion, expected)
    assert torch.equal(evaluate.confusion_matrix(PRED[None], LABEL[None], 4), expected)  # any shape


def test_confusion_matrix_ignores_the_given_ignore_index_only():
    # with ignore_index=0 the two class-0 pixels go, the 255s are out of range
    with pytest.raises(ValueError):
        evaluate.confusion_matrix(PRED, LABEL, 4, ignore_index=0)
    label = torch.where(LABEL == 255, 0, LABEL)  # now pixels (0,0), (0,1), (0,3), (1,3) are ignored
    expected = torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(evaluate.confusion_matrix(PRED, label, 4, ignore_index=0), expected)


def test_confusion_matrix_rejects_out_of_range_labels_and_predictions():
    with pytest.raises(ValueError):
        evaluate.confusion_matrix(PRED, torch.full_like(LABEL, 7), num_classes=4)
    with pytest.raises(ValueError):
        evaluate.confusion_matrix(torch.full_like(PRED, 4), LABEL, num_classes=4)
    with pytest.raises(ValueError):
        evaluate.confusion_matrix(torch.full_like(PRED, -1), LABEL, num_classes=4)


def test_segmentation_metrics_of_the_confusion_of_two_label_maps():
    metrics = evaluate.segmentation_metrics(evaluate.confusion_matrix(PRED, LABEL, 4))
    iou = metrics['per_class_iou']
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: tp 1, gt 2, pred 1 -> 1/2
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2]) and math.isnan(iou[3])  # class 3 absent -> NaN
    assert metrics['miou'] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)  # the absent class does not count
    assert metrics['pixel_acc'] == pytest.approx(4 / 6)
    assert metrics['mean_acc'] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert math.isnan(metrics['miou7'])  # only defined for the 19 Cityscapes classes
    assert all(type(v) is float for v in iou + [metrics['miou'], metrics['pixel_acc'], metrics['mean_acc']])
    json.dumps(metrics)  # serialisable (NaN written as NaN)


# rows = ground truth, columns = prediction. Class 0 and 1 in both, class 2 only predicted, class 3 only in
# the ground truth (never predicted), class 4 in neither. Row and column sums differ, so that recall,
# precision and IoU all differ.
CONFUSION5 = torch.tensor([[4, 1, 1, 0, 0],    # gt 0: 6 pixels
                           [2, 3, 1, 0, 0],    # gt 1: 6 pixels
                           [0, 0, 0, 0, 0],    # gt 2: none
                           [1, 2, 0, 0, 0],    # gt 3: 3 pixels, none predicted as 3
                           [0, 0, 0, 0, 0]])   # predicted: 7, 6, 2, 0, 0; 15 pixels; diagonal 4 + 3


def test_iou_is_tp_over_gt_plus_pred_minus_tp_and_nan_only_for_a_class_in_neither():
    iou = evaluate.segmentation_metrics(CONFUSION5)['per_class_iou']
    assert iou[:4] == pytest.approx([4 / (6 + 7 - 4), 3 / (6 + 6 - 3), 0 / (0 + 2 - 0), 0 / (3 + 0 - 0)])
    assert math.isnan(iou[4])


def test_miou_averages_the_classes_in_ground_truth_or_prediction():
    # classes 0-3 count (a class only predicted, or never predicted, scores 0); class 4 (NaN) does not
    assert evaluate.segmentation_metrics(CONFUSION5)['miou'] == pytest.approx((4 / 9 + 3 / 9 + 0 + 0) / 4)


def test_pixel_accuracy_is_the_diagonal_over_all_pixels():
    assert evaluate.segmentation_metrics(CONFUSION5)['pixel_acc'] == pytest.approx((4 + 3) / 15)


def test_mean_class_accuracy_averages_recall_over_classes_in_the_ground_truth():
    # recall of classes 0, 1, 3 (class 2 is only predicted, class 4 absent): 4/6, 3/6, 0/3
    assert evaluate.segmentation_metrics(CONFUSION5)['mean_acc'] == pytest.approx((4 / 6 + 3 / 6 + 0 / 3) / 3)


def test_segmentation_metrics_of_a_perfect_prediction_are_one():
    label = torch.randint(0, 19, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    metrics = evaluate.segmentation_metrics(evaluate.confusion_matrix(label, label, 19))
    present = set(label.unique().tolist())
    assert metrics['miou'] == 1.0 and metrics['pixel_acc'] == 1.0 and metrics['mean_acc'] == 1.0
    assert [not math.isnan(v) for v in metrics['per_class_iou']] == [k in present for k in range(19)]


def test_representative_classes_are_the_seven_of_the_paper():
    assert data.REPRESENTATIVE_CLASSES == ('road', 'sidewalk', 'building', 'vegetation', 'terrain', 'sky', 'car')
    assert data.REPRESENTATIVE_IDS == (0, 1, 2, 8, 9, 10, 13)  # their Cityscapes train ids
    assert len(data.CITYSCAPES_CLASSES) == 19 and data.CITYSCAPES_CLASSES[13] == 'car'


def test_miou7_averages_the_iou_of_the_representative_classes_present():
    c = torch.zeros(19, 19, dtype=torch.long)
    c[0, 0], c[0, 1] = 1, 1          # road: tp 1, gt 2, pred 1                    -> 1/2
    c[1, 1] = 2                      # sidewalk: tp 2, gt 2, pred 1 + 2 = 3         -> 2/3
    c[2, 2] = 3                      # building: perfect                            -> 1
    c[3, 3], c[3, 9] = 3, 1          # wall: tp 3, gt 4, pred 3 -> 3/4; terrain only predicted -> 0
    c[10, 10], c[10, 11] = 1, 3      # sky: tp 1, gt 4, pred 1 -> 1/4
    c[11, 11] = 2                    # person: tp 2, gt 2, pred 2 + 3 = 5           -> 2/5
    c[13, 13] = 5                    # car: perfect                                 -> 1
    metrics = evaluate.segmentation_metrics(c)  # vegetation (8) and the other classes: in neither -> NaN
    iou = metrics['per_class_iou']
    assert [iou[k] for k in (0, 1, 2, 3, 9, 10, 11, 13)] == pytest.approx([1 / 2, 2 / 3, 1, 3 / 4, 0, 1 / 4, 2 / 5, 1])
    assert sum(math.isnan(v) for v in iou) == 19 - 8
    # road, sidewalk, building, terrain, sky, car (vegetation is NaN and does not count)
    assert metrics['miou7'] == pytest.approx((1 / 2 + 2 / 3 + 1 + 0 + 1 / 4 + 1) / 6)
    assert metrics['miou'] == pytest.approx((1 / 2 + 2 / 3 + 1 + 3 / 4 + 0 + 1 / 4 + 2 / 5 + 1) / 8)


def test_miou7_counts_a_mistake_only_on_a_representative_class():
    label = torch.arange(19)  # one pixel of every class
    person, rider, car, truck = (data.CITYSCAPES_CLASSES.index(n) for n in ('person', 'rider', 'car', 'truck'))
    person_as_rider = evaluate.segmentation_metrics(
        evaluate.confusion_matrix(torch.where(label == person, rider, label), label, 19))
    car_as_truck = evaluate.segmentation_metrics(
        evaluate.confusion_matrix(torch.where(label == car, truck, label), label, 19))
    # both mistakes cost the same over 19 classes (one IoU 0, one IoU 1/2) ...
    assert person_as_rider['miou'] == pytest.approx(17.5 / 19) == car_as_truck['miou']
    # ... but only the car is one of the 7 representative classes
    assert person_as_rider['miou7'] == 1.0
    assert car_as_truck['miou7'] == pytest.approx(6 / 7)


class _FixedLogits(torch.nn.Module):
    """A 'network' whose logits are the one-hot of a fixed label map, whatever the image."""

    def __init__(self, pred, num_classes):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(pred, num_classes).permute(2, 0, 1).float()

    def forward(self, images):
        return self.logits.expand(len(images), *self.logits.shape)


def test_evaluate_segmentation_sums_one_confusion_over_the_batches():
    net = _FixedLogits(PRED, 4)
    batches = [{'image': torch.zeros(1, 3, 2, 4), 'label': LABEL[None]}] * 2  # the same image twice
    metrics = evaluate.evaluate_segmentation(net, batches, torch.device('cpu'), num_classes=4)
    assert metrics['per_class_iou'][:3] == pytest.approx([2 / 6, 4 / 6, 2 / 4])  # counts doubled: same ratios
    assert metrics['pixel_acc'] == pytest.approx(8 / 12) and math.isnan(metrics['per_class_iou'][3])


class _LogitsBySize(torch.nn.Module):
    """A 'network' whose logits, the same at every pixel, depend on the input's height only
    (`table`: height -> logits); it records the sizes it ran at."""

    def __init__(self, table):
        super().__init__()
        self.table, self.sizes = table, []

    def forward(self, images):
        self.sizes.append(tuple(images.shape[-2:]))
        logits = torch.tensor(self.table[images.shape[-2]])
        return logits.view(1, -1, 1, 1).expand(len(images), -1, *images.shape[-2:])


def test_multi_scale_test_averages_each_scales_class_probabilities():
    images = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    # at 64 rows class 0 just beats class 2; at 128 rows class 1 wins: the averaged probabilities pick class 1,
    # averaged logits ([2, 1.5, 1.95]) would pick class 0
    net = _LogitsBySize({64: [4.0, 0.0, 3.9], 96: [0.0, 0.0, 0.0], 128: [0.0, 3.0, 0.0]})
    scores = evaluate.segmentation_scores(net, images, scales=(1.0, 2.0))
    expected = (torch.tensor([4.0, 0.0, 3.9]).softmax(0) + torch.tensor([0.0, 3.0, 0.0]).softmax(0)) / 2
    assert scores.shape == (2, 3, 64, 128) and net.sizes == [(64, 128), (128, 256)]
    torch.testing.assert_close(scores, expected.view(1, 3, 1, 1).expand(2, 3, 64, 128))
    assert (scores.argmax(1) == 1).all()
    net.sizes = []
    evaluate.segmentation_scores(net, images, scales=(0.75, 1.5))  # 48 x 96 and 96 x 192, to multiples of 32
    assert net.sizes == [(64, 96), (96, 192)]


def test_multi_scale_test_mirrors_each_flipped_view_back():
    """A network that reads each pixel alone: its mirrored view, mirrored back, is its plain view."""
    class Pointwise(torch.nn.Module):
        def forward(self, images):
            return torch.cat([images[:, :1] * images.shape[-2] / 64, 1 - images[:, :1]], 1)
    images = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    net = Pointwise()
    torch.testing.assert_close(evaluate.segmentation_scores(net, images, flip=True), net(images).softmax(1))
    two = evaluate.segmentation_scores(net, images, scales=(1.0, 1.5), flip=True)
    by_hand = [torch.nn.functional.interpolate(net(evaluate.data.resize(images, size)), (64, 128), mode='bilinear',
                                               align_corners=False).softmax(1) for size in ((64, 128), (96, 192))]
    torch.testing.assert_close(two, (by_hand[0] + by_hand[1]) / 2)


def test_one_scale_is_the_single_scale_test_bit_for_bit():
    torch.manual_seed(0)
    net = models.build_seg_net(num_classes=4).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(evaluate.segmentation_scores(net, images), net(images))
    batches = [{'image': images, 'label': torch.randint(0, 4, (2, 64, 64))}]
    device = torch.device('cpu')
    single, default = (evaluate.evaluate_segmentation(net, batches, device, 4, **scales)
                       for scales in ({'scales': [1.0]}, {}))
    assert json.dumps(single) == json.dumps(default)  # NaN (a class never seen) included


def test_scales_that_shrink_images_below_the_networks_smallest_input_stop_with_a_sentence():
    evaluate.check_eval_scales([0.5, 1.75], (128, 256))
    with pytest.raises(ValueError, match=r'0\.5 turns the 64x192 images into 32x96 \(multiples of 32\), smaller than '
                                         r'the network\'s smallest input, 64x64: use larger scales'):
        evaluate.check_eval_scales([1.0, 0.5], (64, 192))
    with pytest.raises(ValueError, match='every scale must be above 0'):
        evaluate.check_eval_scales([0.0], (64, 192))


# ---------------------------------------------------------------- depth metrics

def _depth(shape=(2, 1, 4, 5)):
    return 1 + 29 * torch.rand(shape, generator=torch.Generator().manual_seed(0))  # 1..30 m, no clamping at 2x


# One image of four valid pixels, every metric by hand. d = log(pred) - log(gt) = [log 2, 0, -log 2, log 0.8];
# the ratios max(pred/gt, gt/pred) are 2, 1, 2, 1.25 (exactly 1.25: not < 1.25).
GT4 = torch.tensor([[1.0, 2.0, 4.0, 10.0]], dtype=torch.float64)
PRED4 = torch.tensor([[2.0, 2.0, 2.0, 8.0]], dtype=torch.float64)
_D4 = [math.log(2), 0.0, -math.log(2), math.log(0.8)]
_MEAN_D2, _MEAN_D = sum(d * d for d in _D4) / 4, sum(_D4) / 4
EXPECTED4 = {
    'abs_rel': (1 / 1 + 0 / 2 + 2 / 4 + 2 / 10) / 4,          # mean |pred - gt| / gt = 0.425
    'sq_rel': (1 / 1 + 0 / 2 + 4 / 4 + 4 / 10) / 4,           # mean (pred - gt)^2 / gt = 0.6
    'rmse': math.sqrt((1 + 0 + 4 + 4) / 4),                   # 1.5
    'rmse_log': math.sqrt(_MEAN_D2),
    'log10': (math.log10(2) + 0 + math.log10(2) + math.log10(10 / 8)) / 4,
    'a1': 1 / 4, 'a2': 2 / 4, 'a3': 2 / 4,
    'silog': _MEAN_D2 - 0.5 * _MEAN_D ** 2,                   # 1/n sum d^2 - lambda/n^2 (sum d)^2, lambda = 0.5
    'si_rmse': math.sqrt(_MEAN_D2 - _MEAN_D ** 2),            # the same at lambda = 1, square-rooted
}
# One image of one valid pixel (the other three have no ground truth): gt 10, pred 20.
GT1 = torch.tensor([[10.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
PRED1 = torch.tensor([[20.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
EXPECTED1 = {'abs_rel': 1.0, 'sq_rel': 100 / 10, 'rmse': 10.0, 'rmse_log': math.log(2), 'log10': math.log10(2),
             'a1': 0.0, 'a2': 0.0, 'a3': 0.0, 'silog': math.log(2) ** 2 * (1 - 0.5), 'si_rmse': 0.0}


@pytest.mark.parametrize('key', list(EXPECTED4))
def test_each_depth_metric_of_one_image_by_hand(key):
    assert evaluate.depth_metrics(PRED4, GT4)[key] == pytest.approx(EXPECTED4[key], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize('key', list(EXPECTED4))
def test_each_depth_metric_is_averaged_over_images_not_pooled_over_pixels(key):
    # image 0 has one valid pixel, image 1 four: pooling the five pixels would weigh image 1 four times
    pred, gt = torch.stack([PRED1, PRED4]), torch.stack([GT1, GT4])  # [B=2, H=1, W=4]
    metrics = evaluate.depth_metrics(pred, gt)
    assert metrics[key] == pytest.approx((EXPECTED1[key] + EXPECTED4[key]) / 2, rel=1e-12, abs=1e-15)
    assert metrics['images'] == 2 and metrics['skipped'] == 0


def test_depth_metrics_take_one_image_or_a_batch_with_or_without_the_channel():
    pred, gt = torch.stack([PRED1, PRED4]), torch.stack([GT1, GT4])
    batch, channel = evaluate.depth_metrics(pred, gt), evaluate.depth_metrics(pred[:, None], gt[:, None])
    assert batch == channel
    assert evaluate.depth_metrics(PRED4, GT4)['abs_rel'] == pytest.approx(EXPECTED4['abs_rel'])  # [H, W]
    with pytest.raises(ValueError, match='one shape'):
        evaluate.depth_metrics(pred, gt[:1])
    with pytest.raises(ValueError, match='one shape'):
        evaluate.depth_metrics(pred[0, 0], gt[0, 0])  # [W]: not an image


def test_accuracy_thresholds_are_strictly_below_1_25_powers_of_the_larger_ratio():
    # ratios max(pred/gt, gt/pred), all exact in binary: 1.25 = 5/4, 1.5625 = 1.25^2, 1.953125 = 1.25^3
    gt = torch.tensor([[1.0, 1.0, 1.0, 1.3, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    pred = torch.tensor([[1.0, 1.24, 1.25, 1.0, 1.56, 1.5625, 1.95, 1.953125, 2.0]], dtype=torch.float64)
    # ratios:            1.0  1.24  1.25  1.3 (gt/pred)  1.56  1.5625  1.95  1.953125  2.0
    metrics = evaluate.depth_metrics(pred, gt)
    assert metrics['a1'] == pytest.approx(2 / 9)  # 1.0, 1.24 (1.25 itself is not < 1.25; 1.3 uses gt/pred)
    assert metrics['a2'] == pytest.approx(5 / 9)  # ... and 1.25, 1.3, 1.56
    assert metrics['a3'] == pytest.approx(7 / 9)  # ... and 1.5625, 1.95


def test_depth_metrics_of_a_perfect_prediction_are_zero_errors_and_full_accuracy():
    gt = _depth()
    metrics = evaluate.depth_metrics(gt.clone(), gt)
    for key in ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10', 'silog', 'si_rmse'):
        assert metrics[key] == pytest.approx(0, abs=1e-6), key
    assert metrics['a1'] == metrics['a2'] == metrics['a3'] == 1.0
    assert metrics['median_scale'] == 1.0 and metrics['scale_std'] == 0.0 and metrics['images'] == 2


def test_silog_keeps_one_minus_lambda_of_a_scale_error_and_si_rmse_none():
    gt = _depth()
    unscaled = evaluate.depth_metrics(2 * gt, gt)
    assert unscaled['abs_rel'] == pytest.approx(1)
    assert unscaled['a1'] == 0.0
    assert unscaled['rmse_log'] == pytest.approx(math.log(2))
    assert unscaled['log10'] == pytest.approx(math.log10(2))
    assert unscaled['silog'] == pytest.approx(0.5 * math.log(2) ** 2)  # (1 - lambda) (log 2)^2 with lambda = 0.5
    assert unscaled['si_rmse'] == pytest.approx(0, abs=1e-6)  # scale invariant
    assert evaluate.SILOG_LAMBDA == 0.5
    scaled = evaluate.depth_metrics(2 * gt, gt, median_scaling=True)
    assert scaled['abs_rel'] == pytest.approx(0, abs=1e-9) and scaled['median_scale'] == pytest.approx(0.5)


def test_ground_truth_is_scored_only_strictly_between_min_and_max_depth():
    # valid: 10 m (abs_rel 1) and 79.9 m (abs_rel 0); ignored: exactly 80, beyond 80, exactly 1e-3, below, 0
    gt = torch.tensor([[10.0, 80.0, 80.5, 1e-3, 5e-4, 0.0, 79.9]], dtype=torch.float64)
    pred = torch.tensor([[20.0, 1.0, 1.0, 1.0, 1.0, 1.0, 79.9]], dtype=torch.float64)
    assert evaluate.depth_metrics(pred, gt)['abs_rel'] == pytest.approx((1 + 0) / 2)
    # max_depth is a parameter: at 50 m only the 10 m pixel is left; at min_depth 1 m neither 1e-3 pixel
    assert evaluate.depth_metrics(pred, gt, max_depth=50.0)['abs_rel'] == pytest.approx(1.0)
    gt_low = torch.tensor([[10.0, 0.9, 1.0, 1.1]], dtype=torch.float64)
    pred_low = torch.tensor([[10.0, 9.9, 9.9, 2.2]], dtype=torch.float64)
    assert evaluate.depth_metrics(pred_low, gt_low, min_depth=1.0)['abs_rel'] == pytest.approx((0 + 1) / 2)


def test_predictions_are_clamped_to_min_and_max_depth():
    gt = torch.tensor([[40.0, 1.0]], dtype=torch.float64)
    pred = torch.tensor([[100.0, 1e-5]], dtype=torch.float64)  # clamped to 80 and 1e-3
    metrics = evaluate.depth_metrics(pred, gt)
    assert metrics['abs_rel'] == pytest.approx((40 / 40 + (1 - 1e-3) / 1) / 2)
    assert metrics['log10'] == pytest.approx((math.log10(2) + 3) / 2)
    narrow = evaluate.depth_metrics(pred, gt, min_depth=0.01, max_depth=50.0)  # clamped to 50 and 0.01
    assert narrow['abs_rel'] == pytest.approx((10 / 40 + (1 - 0.01) / 1) / 2)
    assert narrow['log10'] == pytest.approx((math.log10(50 / 40) + 2) / 2)


def test_predictions_are_clamped_after_median_scaling():
    gt = torch.tensor([[60.0, 70.0, 79.0]], dtype=torch.float64)
    pred = torch.tensor([[6.0, 7.0, 9.0]], dtype=torch.float64)
    # scale 70 / 7 = 10: [60, 70, 90], then clamped to [60, 70, 80]; clamping first would leave 90
    metrics = evaluate.depth_metrics(pred, gt, median_scaling=True)
    assert metrics['median_scale'] == pytest.approx(10.0)
    assert metrics['abs_rel'] == pytest.approx((0 + 0 + 1 / 79) / 3)


def test_median_scaling_multiplies_by_numpys_median_of_gt_over_that_of_pred_on_valid_pixels():
    # valid pixels: gt [1, 2, 3, 10] (median 2.5, mean of the middle two), pred [1, 1, 3, 3] (median 2):
    # ratio 2.5 / 2 = 1.25. The two pixels without ground truth (pred 100) must not move pred's median.
    gt = torch.tensor([[1.0, 2.0, 3.0, 10.0, 0.0, 0.0]], dtype=torch.float64)
    pred = torch.tensor([[1.0, 1.0, 3.0, 3.0, 100.0, 100.0]], dtype=torch.float64)
    metrics = evaluate.depth_metrics(pred, gt, median_scaling=True)
    assert metrics['median_scale'] == pytest.approx(1.25)
    # scaled pred [1.25, 1.25, 3.75, 3.75]: |.25|/1 + |.75|/2 + |.75|/3 + |6.25|/10
    assert metrics['abs_rel'] == pytest.approx((0.25 + 0.375 + 0.25 + 0.625) / 4)
    unscaled = evaluate.depth_metrics(pred, gt)
    assert unscaled['abs_rel'] == pytest.approx((0 + 0.5 + 0 + 0.7) / 4) and unscaled['median_scale'] == 1.0


def test_median_scaling_is_per_image():
    gt = _depth()
    pred = gt * torch.tensor([2.0, 3.0]).view(2, 1, 1, 1)
    metrics = evaluate.depth_metrics(pred, gt, median_scaling=True)
    assert metrics['abs_rel'] == pytest.approx(0, abs=1e-6)
    assert metrics['median_scale'] == pytest.approx((1 / 2 + 1 / 3) / 2)  # numpy median of two ratios


def test_scale_ratios_report_their_median_and_the_population_std_of_ratio_over_median():
    gt = _depth((4, 1, 4, 5))
    pred = gt / torch.tensor([1.0, 2.0, 4.0, 8.0]).view(4, 1, 1, 1)  # per-image ratios gt / pred: 1, 2, 4, 8
    metrics = evaluate.depth_metrics(pred, gt, median_scaling=True)
    assert metrics['median_scale'] == pytest.approx(3.0)  # even count: the mean of 2 and 4, as np.median
    # ratio / median = 1/3, 2/3, 4/3, 8/3 (mean 5/4): np.std = sqrt(((11/12)^2 + (7/12)^2 + (1/12)^2 + (17/12)^2) / 4)
    assert metrics['scale_std'] == pytest.approx(math.sqrt((121 + 49 + 1 + 289) / 144 / 4))
    odd = evaluate.depth_metrics(pred[:3], gt[:3], median_scaling=True)  # ratios 1, 2, 4: median 2
    assert odd['median_scale'] == pytest.approx(2.0)
    assert odd['scale_std'] == pytest.approx(math.sqrt(((1 / 2 - 7 / 6) ** 2 + (1 - 7 / 6) ** 2 + (2 - 7 / 6) ** 2) / 3))
    metric = evaluate.depth_metrics(pred, gt)
    assert metric['median_scale'] == 1.0 and metric['scale_std'] == 0.0 and metric['images'] == 4


def test_images_of_different_sizes_are_streamed_and_those_without_ground_truth_are_skipped():
    small, large = _depth((1, 1, 4, 5))[0, 0], _depth((1, 1, 6, 9))[0, 0]
    pairs = [(small * 2, small), (large, large), (large, torch.zeros_like(large))]
    metrics = evaluate.average_depth_metrics(iter(pairs))  # a generator: nothing is held but running sums
    assert metrics['abs_rel'] == pytest.approx(0.5)  # (1 + 0) / 2 images: an average over images, not pixels
    assert metrics['images'] == 2 and metrics['skipped'] == 1
    with pytest.raises(ValueError, match='no ground-truth depth'):
        evaluate.average_depth_metrics(iter([(large, torch.zeros_like(large))]))


def test_garg_crop_of_a_375x1242_ground_truth_keeps_monodepth2s_rows_and_columns():
    # rows 0.40810811 H .. 0.99189189 H, columns 0.03594771 W .. 0.96405229 W, truncated to whole pixels:
    # at 375 x 1242, 153.04 -> 153, 371.96 -> 371, 44.65 -> 44, 1197.35 -> 1197 (end rows/columns excluded)
    mask = evaluate.crop_mask((375, 1242), 'garg')
    rows, columns = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    assert (rows[0], rows[-1] + 1, columns[0], columns[-1] + 1) == (153, 371, 44, 1197)
    assert mask.sum() == (371 - 153) * (1197 - 44)  # a rectangle
    assert mask.dtype == torch.bool and mask.shape == (375, 1242)


def _bounds(mask):
    rows, columns = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


def test_garg_crop_truncates_bounds_and_pins_the_fractions_to_six_digits():
    # 370 x 1224: 151.0000007 -> 151, 366.9999993 -> 366, 43.99999704 -> 43, 1180.000003 -> 1180 (truncated
    # as Monodepth2's astype(np.int32), not rounded)
    assert _bounds(evaluate.crop_mask((370, 1224), 'garg')) == (151, 366, 43, 1180)
    # a million rows: 408108.11 -> 408108, 991891.89 -> 991891 (columns of 28: 1.0065 -> 1, 26.99 -> 26)
    assert _bounds(evaluate.crop_mask((1_000_000, 28), 'garg')) == (408108, 991891, 1, 26)
    # a million columns: 35947.71 -> 35947, 964052.29 -> 964052 (rows of 28: 11.43 -> 11, 27.77 -> 27)
    assert _bounds(evaluate.crop_mask((28, 1_000_000), 'garg')) == (11, 27, 35947, 964052)


def test_benchmark_protocol_scores_every_pixel_and_eigen_the_garg_crop():
    assert evaluate.PROTOCOLS == {'eigen': dict(crop='garg', cap_gt=True), 'benchmark': dict(crop=None, cap_gt=False),
                                  'cityscapes': dict(crop='cityscapes', cap_gt=True), 'nyu': dict(crop='nyu', cap_gt=True),
                                  'pairs': dict(crop=None, cap_gt=True)}  # the other layouts' protocols beside KITTI's
    assert evaluate.crop_mask((375, 1242), None).all()
    with pytest.raises(ValueError, match='unknown crop'):
        evaluate.crop_mask((375, 1242), 'eigen')


def test_benchmark_scores_ground_truth_beyond_80_m_with_the_prediction_clamped_and_eigen_leaves_it_out():
    """Monodepth2's evaluate_depth.py: the Eigen split keeps 1e-3 < gt < 80 m; the benchmark split every gt > 0.
    Predictions are clamped to [1e-3, 80] m in both."""
    gt, pred = torch.tensor([[10.0, 85.0]]), torch.tensor([[10.0, 90.0]])
    assert evaluate.depth_metrics(pred, gt, cap_gt=True)['abs_rel'] == 0  # the 85 m pixel is not scored
    assert evaluate.depth_metrics(pred, gt, cap_gt=False)['abs_rel'] == pytest.approx((0 + 5 / 85) / 2)  # 90 -> 80
    with pytest.raises(ValueError, match='no ground-truth depth above 0'):
        evaluate.depth_metrics(pred, torch.zeros_like(gt), cap_gt=False)


def test_garg_crop_scores_only_the_pixels_inside_it():
    gt = _depth((1, 1, 40, 100))
    pred = gt.clone()
    outside = ~evaluate.crop_mask((40, 100), 'garg')
    pred[0, 0][outside] *= 2  # wrong outside the crop only (at most 60 m: not clamped)
    assert evaluate.depth_metrics(pred, gt, crop='garg')['abs_rel'] == pytest.approx(0, abs=1e-9)
    # 40 x 100: rows 16.32 -> 16 .. 39.68 -> 39, columns 3.59 -> 3 .. 96.41 -> 96: 23 x 93 = 2139 inside,
    # 1861 outside at abs_rel |2 - 1| = 1
    assert outside.sum() == 4000 - 23 * 93
    assert evaluate.depth_metrics(pred, gt)['abs_rel'] == pytest.approx(1861 / 4000, rel=1e-6)
    with pytest.raises(ValueError, match='inside the garg crop'):  # ground truth only outside the crop
        evaluate.depth_metrics(gt, torch.where(outside, gt[0, 0], 0.0)[None, None], crop='garg')


def test_constant_depth_baseline_predicts_each_images_median():
    # image 1: gt [1, 2, 4], predicted 2 everywhere; image 2: gt [1, 2, 3, 10], predicted 2.5 (numpy's median)
    gts = [torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[1.0, 2.0], [3.0, 10.0]])]
    baseline = evaluate.constant_depth_baseline(iter(gts))
    abs_rel = ((1 / 1 + 0 / 2 + 2 / 4) / 3 + (1.5 / 1 + 0.5 / 2 + 0.5 / 3 + 7.5 / 10) / 4) / 2
    rmse = (math.sqrt((1 + 0 + 4) / 3) + math.sqrt((1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 7.5 ** 2) / 4)) / 2
    assert baseline['abs_rel'] == pytest.approx(abs_rel)
    assert baseline['rmse'] == pytest.approx(rmse)
    assert baseline['a1'] == pytest.approx((1 / 3 + 1 / 4) / 2)  # ratios 2, 1, 2 and 2.5, 1.25, 1.2, 4
    assert baseline['median_scale'] == pytest.approx((2 + 2.5) / 2)  # the median of the images' medians
    assert baseline['scale_std'] == pytest.approx(1 / 9)  # std of 2/2.25, 2.5/2.25
    assert baseline['images'] == 2


def test_constant_depth_baseline_ignores_depth_beyond_max_and_uses_the_crop():
    gt = _depth((1, 1, 40, 100))
    gt[0, 0][~evaluate.crop_mask((40, 100), 'garg')] = 60.0  # far outside the crop: the constant's worst pixels
    inside = gt[0, 0][evaluate.crop_mask((40, 100), 'garg')].double()
    median = float(np.median(inside.numpy()))
    cropped = evaluate.constant_depth_baseline(gt[:, 0], crop='garg')
    assert cropped['abs_rel'] == pytest.approx(float(((median - inside).abs() / inside).mean()), rel=1e-6)
    # with max_depth 50 the 60 m pixels are not ground truth: the same as the crop
    capped = evaluate.constant_depth_baseline(gt[:, 0], max_depth=50.0)
    assert capped['abs_rel'] == pytest.approx(cropped['abs_rel'], rel=1e-6)
    everything = gt[0, 0].flatten().double()
    median_all = float(np.median(everything.numpy()))
    assert evaluate.constant_depth_baseline(gt[:, 0])['abs_rel'] == pytest.approx(
        float(((median_all - everything).abs() / everything).mean()), rel=1e-6)


def _reference_depth_metrics(pred, gt, min_depth=1e-3, max_depth=80.0):
    """Monodepth2's compute_errors (plus log10, SILog and SI-RMSE) over one image, written out in NumPy."""
    pred, gt = np.asarray(pred, np.float64).ravel(), np.asarray(gt, np.float64).ravel()
    keep = (gt > min_depth) & (gt < max_depth)
    pred, gt = np.clip(pred[keep], min_depth, max_depth), gt[keep]
    thresh = np.maximum(gt / pred, pred / gt)
    d = np.log(pred) - np.log(gt)
    return {'abs_rel': np.mean(np.abs(gt - pred) / gt), 'sq_rel': np.mean((gt - pred) ** 2 / gt),
            'rmse': np.sqrt(np.mean((gt - pred) ** 2)), 'rmse_log': np.sqrt(np.mean(d ** 2)),
            'log10': np.mean(np.abs(np.log10(pred) - np.log10(gt))),
            'a1': np.mean(thresh < 1.25), 'a2': np.mean(thresh < 1.25 ** 2), 'a3': np.mean(thresh < 1.25 ** 3),
            'silog': np.mean(d ** 2) - 0.5 * np.mean(d) ** 2, 'si_rmse': np.sqrt(np.mean(d ** 2) - np.mean(d) ** 2)}


def test_depth_metrics_of_seeded_random_maps_match_a_numpy_reference():
    generator = torch.Generator().manual_seed(3)
    gt = 100 * torch.rand(3, 6, 7, generator=generator, dtype=torch.float64)  # some beyond 80 m
    gt[gt < 5] = 0  # some without ground truth
    pred = gt * torch.exp(0.4 * torch.randn(3, 6, 7, generator=generator, dtype=torch.float64)) + 0.5
    metrics = evaluate.depth_metrics(pred, gt)
    references = [_reference_depth_metrics(p, g) for p, g in zip(pred, gt)]
    for key in references[0]:
        assert metrics[key] == pytest.approx(np.mean([r[key] for r in references]), rel=1e-9), key


# ---------------------------------------------------------------- evaluate_depth on a test split

class _DispNet(torch.nn.Module):
    """A disparity 'network' that outputs a fixed map [h, w] (as the finest of its scales), whatever the image."""

    def __init__(self, disp):
        super().__init__()
        self.disp = disp

    def forward(self, images):
        return [self.disp.expand(len(images), 1, *self.disp.shape)]


class _Frames(list):
    """A data.DepthTestFrames stand-in: items {'frames': [1, 3, h, w], 'depth': [1, H, W]}, a protocol and the
    number of split frames without ground truth."""

    def __init__(self, depths, protocol='benchmark', skipped=0, size=(2, 2)):
        super().__init__({'frames': torch.zeros(1, 3, *size), 'depth': d[None].float()} for d in depths)
        self.protocol, self.skipped = protocol, skipped


def _to_depth(disp, min_depth, max_depth):
    """Monodepth2's sigmoid disparity -> depth, written out here."""
    return 1 / (1 / max_depth + (1 / min_depth - 1 / max_depth) * disp)


def test_evaluate_depth_upsamples_the_prediction_to_each_ground_truths_own_size():
    net = _DispNet(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # 2x2 network output, columns 0 and 1
    # bilinear (align_corners=False) 2 -> 4 columns: 0, 1/4, 3/4, 1; 2 -> 6 columns: 0, 0, 1/3, 2/3, 1, 1
    depth4 = _to_depth(torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=torch.float64), 1.0, 10.0).expand(4, 4)
    depth6 = _to_depth(torch.tensor([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0], dtype=torch.float64), 1.0, 10.0).expand(3, 6)
    # ground truth larger than the network's input, of two sizes: exact on the first, twice as far on the second
    frames = _Frames([depth4, 2 * depth6])
    metrics = evaluate.evaluate_depth(net, frames, torch.device('cpu'), min_depth=1.0, max_depth=10.0,
                                      median_scaling=False)
    assert metrics['abs_rel'] == pytest.approx((0 + 0.5) / 2, rel=1e-6)
    assert metrics['rmse'] == pytest.approx((0 + float(depth6.pow(2).mean().sqrt())) / 2, rel=1e-6)
    assert metrics['a1'] == pytest.approx((1 + 0) / 2)
    assert metrics['images'] == 2 and metrics['skipped'] == 0 and metrics['median_scale'] == 1.0
    scaled = evaluate.evaluate_depth(net, frames, torch.device('cpu'), min_depth=1.0, max_depth=10.0)
    assert scaled['abs_rel'] == pytest.approx(0, abs=1e-6)  # median scaling is on by default
    assert scaled['median_scale'] == pytest.approx((1 + 2) / 2, rel=1e-6)


def test_evaluate_depth_caps_at_eval_max_depth_and_counts_frames_without_ground_truth():
    net = _DispNet(torch.zeros(2, 2))  # disparity 0: the network's max_depth, 100 m by default
    gt = torch.full((3, 3), 40.0)
    gt[0, 0] = 90.0  # beyond 80 m: scored by the benchmark protocol (gt > 0), against the clamped prediction
    frames = _Frames([gt, torch.zeros(3, 3)], skipped=2)  # the second frame has no valid pixel
    metrics = evaluate.evaluate_depth(net, frames, torch.device('cpu'), median_scaling=False)
    assert metrics['abs_rel'] == pytest.approx((8 * (80 - 40) / 40 + (90 - 80) / 90) / 9)  # 100 m clamped to 80 m
    assert metrics['images'] == 1 and metrics['skipped'] == 1 + 2  # the empty frame and the split's two
    capped = evaluate.evaluate_depth(net, frames, torch.device('cpu'), eval_max_depth=50.0, median_scaling=False)
    assert capped['abs_rel'] == pytest.approx((8 * (50 - 40) / 40 + (90 - 50) / 90) / 9)


@pytest.mark.parametrize('protocol, expected', [('eigen', 0.0), ('benchmark', 0.5 * (300 - 5 * 27) / 300)])
def test_evaluate_depth_crops_eigen_frames_and_scores_benchmark_frames_everywhere(protocol, expected):
    net = _DispNet(torch.full((2, 2), 0.5))
    depth = float(_to_depth(torch.tensor(0.5, dtype=torch.float64), 0.1, 100.0))
    # 10 x 30: the Garg crop keeps rows 4.08 -> 4 .. 9.92 -> 9 and columns 1.08 -> 1 .. 28.92 -> 28 (5 x 27)
    inside = torch.zeros(10, 30, dtype=torch.bool)
    inside[4:9, 1:28] = True
    gt = torch.where(inside, depth, 2 * depth)  # exact inside the crop, abs_rel 1/2 outside
    metrics = evaluate.evaluate_depth(net, _Frames([gt], protocol), torch.device('cpu'), median_scaling=False)
    assert metrics['abs_rel'] == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- optical flow

def _flow_case():
    """Three 1x9 images [B, 2, 1, 9]: (gt flow, error) per pixel, the valid pixels, and the expected EPE / Fl."""
    gt = torch.zeros(3, 2, 1, 9)
    error = torch.zeros(3, 2, 1, 9)
    valid = torch.zeros(3, 1, 9, dtype=torch.bool)
    cases = [((0, 10), (4, 0)),     # EPE 4 > 3 and > 0.5 (5% of 10): outlier
             ((60, 80), (0, 4)),    # EPE 4 > 3 but < 5 (5% of 100): not ('or' would count it)
             ((0, 10), (2, 0)),     # EPE 2 > 0.5 but < 3: not ('or' would count it)
             ((0, 10), (3, 0)),     # EPE exactly 3: not (strict)
             ((60, 80), (3, 4)),    # EPE exactly 5 = 5% of 100: not (strict)
             ((30, 40), (0, 4)),    # EPE 4 > 3 and > 2.5 (5% of 50): outlier (not at 10%)
             ((60, 80), (0, 4.5)),  # EPE 4.5 > 3 but < 5: not (an outlier at 4%)
             ((0, 82), (0, -4)),    # EPE 4 < 4.1 (5% of the true 82): not (but > 5% of the predicted 78)
             ((0, 1), (100, 0))]    # EPE 100: an outlier, but not a valid pixel
    for i, (flow, err) in enumerate(cases):
        gt[0, :, 0, i], error[0, :, 0, i] = torch.tensor(flow), torch.tensor(err)
    valid[0, 0, :8] = True
    error[1, :, 0, 0] = torch.tensor([0.0, 3.5])  # image 1: one valid pixel, zero flow, EPE 3.5: outlier
    error[1, 0, 0, 1:] = 50.0  # large errors at its invalid pixels
    valid[1, 0, 0] = True
    error[2] = 7.0  # image 2: no valid pixel at all, not counted
    epe = ((4 + 4 + 2 + 3 + 5 + 4 + 4.5 + 4) / 8 + 3.5) / 2  # per image, then over images (RAFT)
    fl = (2 + 1) / (8 + 1)  # outliers over the valid pixels of all images together (KITTI's devkit)
    return gt + error, gt, valid, epe, fl


def test_flow_epe_averages_each_images_valid_pixels_then_images_and_fl_pools_all_valid_pixels():
    pred, gt, valid, epe, fl = _flow_case()
    for batches in ([(pred, gt, valid)], [(pred[i:i + 1], gt[i:i + 1], valid[i:i + 1]) for i in range(3)]):
        metrics = evaluate.flow_metrics(batches)  # one batch of three, or three of one: the same
        assert metrics['epe'] == pytest.approx(epe)
        assert metrics['fl'] == pytest.approx(fl)


def test_flow_outlier_needs_both_more_than_3_px_and_more_than_5_percent_of_the_true_length():
    pred, gt, valid, _, _ = _flow_case()
    first = evaluate.flow_metrics([(pred[:1], gt[:1], valid[:1])])
    assert first['fl'] == pytest.approx(2 / 8)  # pixels 0 and 5 of the eight valid ones
    for pixel, outlier in enumerate([1, 0, 0, 0, 0, 1, 0, 0]):  # each valid pixel alone
        only = torch.zeros_like(valid[:1])
        only[0, 0, pixel] = True
        assert evaluate.flow_metrics([(pred[:1], gt[:1], only)])['fl'] == outlier, pixel


def test_flow_metrics_need_a_valid_pixel():
    pred, gt, valid, _, _ = _flow_case()
    with pytest.raises(ValueError, match='no valid ground-truth flow'):
        evaluate.flow_metrics([(pred, gt, torch.zeros_like(valid))])


# ---------------------------------------------------------------- runs, tables, figures

def _write_run(folder, args, lines):
    folder.mkdir()
    (folder / 'args.json').write_text(json.dumps(args))
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))
    return folder


@pytest.fixture
def runs(tmp_path):
    common = dict(arch='resnet18', height=96, width=320, iters=200, seed=0)
    seg = _write_run(tmp_path / 'seg_depth_frozen', dict(common, task='seg', init='depth', freeze_encoder=True,
                                                           train_size=16, name='seg_depth_frozen'), [
        {'iter': 50, 'split': 'train', 'loss': 2.1, 'lr': 1e-3, 'images_per_s': 30.0},
        {'iter': 100, 'split': 'eval', 'miou7': 0.3, 'miou': 0.2, 'pixel_acc': 0.7, 'mean_acc': 0.3},
        {'iter': 200, 'split': 'eval', 'miou7': 0.63214, 'miou': 0.41, 'pixel_acc': 0.85, 'mean_acc': 0.5,
         'per_class_iou': [0.5] * 19}])
    depth = _write_run(tmp_path / 'depth_mono', dict(common, task='depth', name='depth_mono'), [
        {'iter': 50, 'split': 'train', 'loss': 0.2, 'lr': 1e-4, 'images_per_s': 12.0},
        {'iter': 0, 'split': 'baseline', 'abs_rel': 0.35, 'rmse': 9.0},
        {'iter': 100, 'split': 'eval', 'abs_rel': 0.2, 'sq_rel': 2.0, 'rmse': 7.0, 'rmse_log': 0.3, 'a1': 0.7},
        {'iter': 200, 'split': 'eval', 'abs_rel': 0.1234, 'sq_rel': 1.5, 'rmse': 6.25, 'rmse_log': 0.2, 'a1': 0.875}])
    return seg, depth


def test_read_run_reads_a_folder_skipping_a_half_written_line_and_a_checkpoint(runs, tmp_path):
    run = evaluate.read_run(runs[0])
    assert run['name'] == 'seg_depth_frozen' and run['args']['init'] == 'depth' and len(run['metrics']) == 3
    with open(runs[0] / 'metrics.jsonl', 'a') as f:
        f.write('{"iter": 250, "spl')  # a run still writing its last line
    assert len(evaluate.read_run(runs[0])['metrics']) == 3
    checkpoint = tmp_path / 'seg.pt'
    torch.save({'model': {}, 'task': 'seg', 'arch': 'resnet18', 'normalization': 'unit', 'height': 64, 'width': 192,
                'iter': 300, 'metrics': {'miou7': 0.5},
                'args': {'name': 'from_ckpt', 'init': 'imagenet'}}, checkpoint)
    run = evaluate.read_run(checkpoint)
    assert run['name'] == 'from_ckpt' and run['args']['task'] == 'seg'
    assert run['metrics'] == [{'iter': 300, 'split': 'eval', 'miou7': 0.5}]


def test_read_run_rejects_paths_that_are_not_runs(tmp_path):
    stray = tmp_path / 'notes.txt'
    stray.write_text('hello')
    with pytest.raises(ValueError, match='not a run'):
        evaluate.read_run(stray)
    with pytest.raises(ValueError, match='not a run'):
        evaluate.read_run(tmp_path)  # a folder without args.json
    with pytest.raises(FileNotFoundError):
        evaluate.read_run(tmp_path / 'missing')


def test_results_table_has_a_row_per_run_with_its_last_eval_and_baseline_metrics(runs):
    table = evaluate.results_table([evaluate.read_run(path) for path in runs])
    seg_part, depth_part = table.split('### depth')
    assert 'seg_depth_frozen' in seg_part and 'depth_mono' in depth_part
    row = next(line for line in seg_part.splitlines() if line.startswith('| seg_depth_frozen'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    # the last eval line (iter 200), in percent with two decimals: 0.63214 -> 63.21, 0.41 -> 41.00, 0.85 -> 85.00
    assert cells == ['seg_depth_frozen', 'seg', 'depth', '–', 'yes', '16', 'resnet18', '96x320', '200',
                     f'{100 * 0.63214:.2f}', f'{100 * 0.41:.2f}', f'{100 * 0.85:.2f}']
    row = next(line for line in depth_part.splitlines() if line.startswith('| depth_mono'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    # the last eval line's abs_rel .. si_rmse with three decimals ('–' where not logged), then the baseline's abs_rel
    assert cells[-11:] == [f'{0.1234:.3f}', f'{1.5:.3f}', f'{6.25:.3f}', f'{0.2:.3f}', '–', f'{0.875:.3f}',
                           '–', '–', '–', '–', f'{0.35:.3f}']


def test_plot_curves_draws_each_runs_eval_curve_and_its_baseline_in_a_png_of_two_panels(runs, tmp_path):
    path = tmp_path / 'figs' / 'curves.png'
    fig = evaluate.plot_curves([evaluate.read_run(p) for p in runs], path)
    seg, depth = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ['Segmentation', 'Depth']
    # segmentation: the eval lines' miou7 (0.3 at 100, 0.63214 at 200) in percent; no baseline logged
    (line,) = seg.lines
    assert list(line.get_xdata()) == [100, 200] and list(line.get_ydata()) == pytest.approx([100 * 0.3, 100 * 0.63214])
    # depth: the eval lines' abs_rel, and the baseline's (0.35) as a dashed horizontal line
    curve, baseline = depth.lines
    assert list(curve.get_xdata()) == [100, 200] and list(curve.get_ydata()) == pytest.approx([0.2, 0.1234])
    assert list(baseline.get_ydata()) == pytest.approx([0.35, 0.35]) and baseline.get_linestyle() == '--'
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (450, 1200)  # two 6 x 4.5 inch panels at 100 dpi


def test_cli_prints_and_writes_the_tables_and_the_figures(runs, tmp_path, capsys):
    out_dir = tmp_path / 'results'
    evaluate.main([str(runs[0]), str(runs[1]), '--out-dir', str(out_dir)])
    printed = capsys.readouterr().out
    table = (out_dir / 'results.md').read_text()
    loaded = [evaluate.read_run(p) for p in runs]
    assert table == ('## Configurations (mean ± std over seeds)\n\n' + evaluate.grouped_table(loaded)
                     + '\n## Every run\n\n' + evaluate.results_table(loaded))
    assert table in printed and f'{100 * 0.63214:.2f}' in table and 'curves.png' in printed
    assert matplotlib.image.imread(out_dir / 'curves.png').shape[:2] == (450, 1200)  # seg and depth panels
    # one train size: no Fig. 3, and one line saying so; no temp files left
    assert sorted(p.name for p in out_dir.iterdir()) == ['curves.png', 'frozen.png', 'results.md']
    assert 'train_size.png not written' in printed


def test_cli_stops_with_a_sentence_on_a_path_that_is_not_a_run(runs, tmp_path, capsys):
    stray = tmp_path / 'stray.log'
    stray.write_text('not a run')
    with pytest.raises(SystemExit):
        evaluate.main([str(runs[0]), str(stray), '--out-dir', str(tmp_path / 'results')])
    error = capsys.readouterr().err
    assert 'stray.log is not a run' in error
    assert not (tmp_path / 'results').exists()


def _seg_runs(tmp_path, init, frozen, miou7s, train_size=16):
    """Hand-made segmentation run folders, one per seed, ending at the given mIoU (7 classes)."""
    folders = []
    for seed, miou7 in enumerate(miou7s):
        name = f"seg-{init}-unet-{'frozen' if frozen else 'full'}-n{train_size}-resnet18-64x192-s{seed}"
        args = dict(task='seg', init=init, decoder='unet', freeze_encoder=frozen, train_size=train_size,
                    arch='resnet18', height=64, width=192, iters=100, seed=seed, name=name, runs=str(tmp_path))
        folders.append(_write_run(tmp_path / name, args, [
            {'iter': 50, 'split': 'eval', 'miou7': miou7 / 2, 'miou': 0.1, 'pixel_acc': 0.5},
            {'iter': 100, 'split': 'eval', 'miou7': miou7, 'miou': 0.2, 'pixel_acc': 0.8}]))
    return folders


def test_runs_differing_only_in_seed_are_grouped_with_mean_and_std(tmp_path):
    paths = (_seg_runs(tmp_path, 'depth', False, [0.60, 0.70, 0.80]) + _seg_runs(tmp_path, 'none', False, [0.5, 0.5])
             + _seg_runs(tmp_path, 'depth', True, [0.4]))
    runs = [evaluate.read_run(p) for p in paths]
    groups = evaluate.group_runs(runs)
    assert [(label, len(members)) for label, members in groups] == [
        ('seg-depth-unet-full-n16-resnet18-64x192', 3), ('seg-none-unet-full-n16-resnet18-64x192', 2),
        ('seg-depth-unet-frozen-n16-resnet18-64x192', 1)]
    table = evaluate.grouped_table(runs)
    row = next(line for line in table.splitlines() if line.startswith('| seg-depth-unet-full'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    # mean 0.7 and sample std 0.1 of 0.6, 0.7, 0.8 (the population std would be 0.0816)
    mean, std = statistics.mean([0.6, 0.7, 0.8]), statistics.stdev([0.6, 0.7, 0.8])
    assert cells[9] == '3' and cells[10] == f'{100 * mean:.2f} ± {100 * std:.2f}' == '70.00 ± 10.00'
    assert '50.00 ± 0.00' in table  # two seeds that agree
    row = next(line for line in table.splitlines() if line.startswith('| seg-depth-unet-frozen'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells[9:12] == ['1', '40.00', '20.00'] and '±' not in row  # one seed: its values alone


def test_curves_plot_segmentation_in_percent_and_depth_as_logged(runs, tmp_path):
    fig = evaluate.plot_curves([evaluate.read_run(p) for p in runs], tmp_path / 'curves.png')
    seg_axes = fig.axes[0]
    assert seg_axes.get_ylabel() == 'mIoU (7 classes) %'
    assert list(seg_axes.lines[0].get_ydata()) == pytest.approx([30.0, 63.214])
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx([0.2, 0.1234])  # depth stays as logged


def test_curves_plot_mIoU_over_all_classes_for_runs_without_the_7_classes(runs, tmp_path):
    # an NYU run: its 40 classes hold none of KITTI's 7 representative ones, so miou7 is logged as NaN
    args = dict(task='seg', data='nyu', init='none', arch='resnet18', height=96, width=128, iters=200, seed=0,
                name='nyu_seg')
    nyu = _write_run(tmp_path / 'nyu_seg', args, [
        {'iter': 100, 'split': 'eval', 'miou7': math.nan, 'miou': 0.15, 'pixel_acc': 0.7},
        {'iter': 200, 'split': 'eval', 'miou7': math.nan, 'miou': 0.26, 'pixel_acc': 0.8}])
    fig = evaluate.plot_curves([evaluate.read_run(p) for p in (runs[0], nyu)], tmp_path / 'curves.png')
    kitti, nyu_line = fig.axes[0].lines
    assert list(kitti.get_ydata()) == pytest.approx([30.0, 63.214]) and 'all classes' not in kitti.get_label()
    assert list(nyu_line.get_ydata()) == pytest.approx([15.0, 26.0]) and 'all classes' in nyu_line.get_label()


def test_frozen_figure_draws_only_the_bars_that_exist(tmp_path):
    paths = (_seg_runs(tmp_path, 'depth', True, [0.6, 0.7]) + _seg_runs(tmp_path, 'depth', False, [0.8])
             + _seg_runs(tmp_path, 'none', True, [0.3]))  # no fine-tuned run from random weights
    fig = evaluate.plot_frozen([evaluate.read_run(p) for p in paths], tmp_path / 'frozen.png')
    ax = fig.axes[0]
    assert sorted(bar.get_height() for bar in ax.patches) == pytest.approx([30.0, 65.0, 80.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ['seg-depth-unet-n16-resnet18-64x192',
                                                            'seg-none-unet-n16-resnet18-64x192']


def test_train_size_figure_needs_two_sizes_of_one_configuration(tmp_path):
    one_size = _seg_runs(tmp_path, 'depth', False, [0.5]) + _seg_runs(tmp_path, 'none', False, [0.3], train_size=4)
    assert evaluate.plot_train_size([evaluate.read_run(p) for p in one_size], tmp_path / 'fig3.png') is None
    assert not (tmp_path / 'fig3.png').exists()
    two_sizes = one_size + _seg_runs(tmp_path, 'depth', False, [0.7], train_size=64)
    fig = evaluate.plot_train_size([evaluate.read_run(p) for p in two_sizes], tmp_path / 'fig3.png')
    assert (tmp_path / 'fig3.png').is_file()
    series, = fig.axes[0].containers  # only the depth configuration has two sizes
    line = series.lines[0]
    assert list(line.get_xdata()) == [16, 64] and list(line.get_ydata()) == pytest.approx([50.0, 70.0])


def test_init_name_of_a_run_checkpoint_is_that_runs_name_without_the_seed_its_args_json_gives(tmp_path):
    assert evaluate.init_name('none') == 'none' and evaluate.init_name('depth') == 'depth'
    assert evaluate.init_name('checkpoints/depth-stereo.pt') == 'depth-stereo'
    _write_run(tmp_path / 'depth-mono-s2', dict(task='depth', seed=2, name='depth-mono-s2'), [])
    assert evaluate.init_name(str(tmp_path / 'depth-mono-s2' / 'checkpoint.pt')) == 'depth-mono'
    _write_run(tmp_path / 'mine-s2', dict(task='depth', seed=0, name='mine-s2'), [])  # seed 0: '-s2' is its name's
    assert evaluate.init_name(str(tmp_path / 'mine-s2' / 'checkpoint.pt')) == 'mine-s2'
    gone = str(tmp_path / 'gone-s1' / 'checkpoint.pt')  # no args.json says what it was: the path as given
    assert evaluate.init_name(gone) == gone


def _named_seg_run(tmp_path, name, seed, miou7, init='depth', frozen=True, train_size=16):
    """A segmentation run folder whose name, given with --name, says nothing of its flags."""
    args = dict(task='seg', init=init, decoder='unet', freeze_encoder=frozen, train_size=train_size, arch='resnet18',
                height=64, width=192, iters=100, seed=seed, name=name, runs=str(tmp_path))
    return _write_run(tmp_path / name, args, [{'iter': 100, 'split': 'eval', 'miou7': miou7, 'miou': 0.2,
                                               'pixel_acc': 0.8}])


def test_runs_named_with_name_are_grouped_and_labelled_by_their_args_json(tmp_path, capsys):
    paths = [_named_seg_run(tmp_path, 'alpha-s7', 0, 0.6), _named_seg_run(tmp_path, 'beta', 1, 0.8),
             _named_seg_run(tmp_path, 'gamma-n4', 0, 0.3, init='none')]
    runs = [evaluate.read_run(p) for p in paths]
    groups = evaluate.group_runs(runs)
    assert [(label, [run['name'] for run in members]) for label, members in groups] == [
        ('init=depth', ['alpha-s7', 'beta']), ('init=none', ['gamma-n4'])]
    table = evaluate.grouped_table(runs)
    assert '| init=depth | seg | depth | unet | yes | 16 |' in table and '| 70.00 ± 14.14 |' in table
    assert evaluate.headlines(runs) == ['mIoU (7 classes), frozen encoder: depth 70.0 vs random 30.0 (+40.0), '
                                        'depth mean of 2 seeds, random one seed']
    # a second frozen setting: the labels name every flag in which the configurations differ
    runs.append(evaluate.read_run(_named_seg_run(tmp_path, 'delta', 0, 0.5, init='none', train_size=4)))
    assert [label for label, _ in evaluate.group_runs(runs)] == [
        'init=depth, train_size=16', 'init=none, train_size=16', 'init=none, train_size=4']


def test_figures_of_runs_named_with_name_take_train_size_and_frozen_from_args_json(tmp_path):
    runs = [evaluate.read_run(p) for p in [_named_seg_run(tmp_path, 'small', 0, 0.3, frozen=False, train_size=4),
                                           _named_seg_run(tmp_path, 'large', 0, 0.5, frozen=False),
                                           _named_seg_run(tmp_path, 'still', 0, 0.4)]]
    fig = evaluate.plot_train_size(runs, tmp_path / 'fig3.png')  # 'small' and 'large': one configuration
    series, = fig.axes[0].containers
    assert list(series.lines[0].get_xdata()) == [4, 16] and list(series.lines[0].get_ydata()) == pytest.approx([30, 50])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ['init=depth']
    fig = evaluate.plot_frozen(runs, tmp_path / 'fig4.png')  # 'still' is 'large' with a frozen encoder
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ['train_size=4', 'train_size=16']  # what differs
    assert [bar.get_height() for bar in fig.axes[0].patches] == pytest.approx([40.0, 30.0, 50.0])


def test_a_configuration_is_labelled_by_the_default_name_its_runs_share_else_by_its_flags(tmp_path):
    runs = [evaluate.read_run(_named_seg_run(tmp_path, 'mine', 0, 0.5)),
            evaluate.read_run(_named_seg_run(tmp_path, 'seg-depth-frozen-s1', 1, 0.5))]  # ends in its own seed
    assert [label for label, _ in evaluate.group_runs(runs)] == ['seg-depth-frozen']
    runs.append(evaluate.read_run(_named_seg_run(tmp_path, 'other-s2', 2, 0.5)))  # two names: neither is the label
    assert [label for label, _ in evaluate.group_runs(runs)] == ['init=depth']


def test_a_figures_series_drops_the_runs_own_name_parts_not_those_of_its_init():
    # fine-tuned (n4, full) from a fine-tuned run (n16, full) whose name begins its own
    run = {'name': 'seg-seg-depth-unet-full-n16-resnet18-64x192-unet-full-n4-resnet18-64x192-s0',
           'args': dict(seed=0, train_size=4, freeze_encoder=False)}
    assert evaluate._default_name(run, ['train_size', 'freeze_encoder']) == (
        'seg-seg-depth-unet-full-n16-resnet18-64x192-unet-resnet18-64x192')
    assert evaluate._default_name(dict(run, args=dict(seed=1, train_size=4))) is None  # not its seed: --name's


def test_an_init_is_depth_pre_training_by_what_its_args_json_or_checkpoint_records(tmp_path):
    _write_run(tmp_path / 'depth-run', dict(task='depth', seed=0), [])
    _write_run(tmp_path / 'seg-run', dict(task='seg', seed=0), [])
    assert evaluate.depth_init('depth') and evaluate.depth_init(str(tmp_path / 'depth-run' / 'checkpoint.pt'))
    assert not evaluate.depth_init(str(tmp_path / 'seg-run' / 'checkpoint.pt'))
    assert not evaluate.depth_init('none') and not evaluate.depth_init('imagenet')
    exported = {'model': {}, 'arch': 'resnet18', 'normalization': 'unit', 'height': 64, 'width': 192}
    torch.save(dict(exported, task='depth'), tmp_path / 'mine.pt')  # its recorded task, whatever its file's name
    torch.save(dict(exported, task='seg'), tmp_path / 'depth-s0.pt')
    assert evaluate.depth_init(str(tmp_path / 'mine.pt')) and not evaluate.depth_init(str(tmp_path / 'depth-s0.pt'))
    exported = tmp_path / 'depth.pt'
    torch.save({'conv1.weight': torch.zeros(1)}, exported)  # weights of no run of this code
    assert not evaluate.depth_init(str(exported))


def test_runs_fine_tuned_from_the_seeds_of_one_pre_training_are_one_configuration(tmp_path):
    inits = []
    for seed, name in enumerate(['pre-a', 'pre-b']):  # --name'd depth pre-trainings, seeds 0 and 1
        _write_run(tmp_path / name, dict(task='depth', supervision='stereo', arch='resnet18', seed=seed, name=name), [])
        inits.append(str(tmp_path / name / 'checkpoint.pt'))
    runs = [evaluate.read_run(p) for p in [_named_seg_run(tmp_path, 'ft-a', 0, 0.6, init=inits[0]),
                                           _named_seg_run(tmp_path, 'ft-b', 1, 0.8, init=inits[1]),
                                           _named_seg_run(tmp_path, 'ft-c', 0, 0.3, init='none')]]
    assert [(label, len(members)) for label, members in evaluate.group_runs(runs)] == [('init=pre-a', 2),
                                                                                        ('init=none', 1)]
    # their args.json says the init was trained for depth, whatever its name
    assert evaluate.headlines(runs) == ['mIoU (7 classes), frozen encoder: pre-a 70.0 vs random 30.0 (+40.0), '
                                        'pre-a mean of 2 seeds, random one seed']
    (tmp_path / 'pre-b' / 'args.json').unlink()  # what the init was is unknown: a configuration of its own
    assert [len(members) for _, members in evaluate.group_runs(runs)] == [1, 1, 1]


def test_headline_compares_depth_with_random_init_in_the_same_setting(tmp_path, capsys):
    paths = (_seg_runs(tmp_path, 'depth', False, [0.75]) + _seg_runs(tmp_path, 'none', False, [0.5, 0.4])
             + _seg_runs(tmp_path, 'depth', True, [0.6, 0.7, 0.8]) + _seg_runs(tmp_path, 'none', True, [0.3, 0.28, 0.26])
             + _seg_runs(tmp_path, 'imagenet', True, [0.9])  # not part of the comparison
             + _seg_runs(tmp_path, 'depth', True, [0.5], train_size=4))  # no random-init partner
    expected = ['mIoU (7 classes), frozen encoder: depth 70.0 vs random 28.0 (+42.0), mean of 3 seeds',
                'mIoU (7 classes), fine-tuned encoder: depth 75.0 vs random 45.0 (+30.0), '
                'depth one seed, random mean of 2 seeds']
    assert evaluate.headlines([evaluate.read_run(p) for p in paths]) == expected
    out_dir = tmp_path / 'results'
    evaluate.main([str(p) for p in paths] + ['--out-dir', str(out_dir)])
    assert capsys.readouterr().out.strip().splitlines()[-2:] == expected  # the last thing printed
    assert (out_dir / 'results.md').read_text().startswith('\n'.join(expected) + '\n\n## Configurations')


def test_headline_names_the_configuration_when_a_setting_has_several_pairs(tmp_path):
    paths = []
    for size in (4, 16):
        paths += _seg_runs(tmp_path, 'depth', True, [0.5], size) + _seg_runs(tmp_path, 'none', True, [0.25], size)
    lines = evaluate.headlines([evaluate.read_run(p) for p in paths])
    assert lines == [f'mIoU (7 classes), frozen encoder (seg-depth-unet-frozen-n{size}-resnet18-64x192): '
                     f'depth 50.0 vs random 25.0 (+25.0)' for size in (4, 16)]


def test_no_headline_without_a_pair(runs, tmp_path, capsys):
    loaded = [evaluate.read_run(p) for p in runs]
    assert evaluate.headlines(loaded) == []
    evaluate.main([str(p) for p in runs] + ['--out-dir', str(tmp_path / 'results')])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('wrote ')
    assert (tmp_path / 'results' / 'results.md').read_text().startswith('## Configurations')


def test_train_size_frozen_and_curve_figures_draw_the_seed_means_and_stds_of_the_runs(tmp_path):
    paths, final = [], {}
    for size, base in ((4, 0.3), (16, 0.5), (64, 0.7)):
        for init, bonus in (('depth', 0.1), ('none', 0.0)):
            final[init, 'full', size] = [base + bonus, base + bonus + 0.02]
            paths += _seg_runs(tmp_path, init, False, final[init, 'full', size], train_size=size)
    final['depth', 'frozen', 16], final['none', 'frozen', 16] = [0.55, 0.57], [0.2, 0.25]
    paths += _seg_runs(tmp_path, 'depth', True, [0.55, 0.57]) + _seg_runs(tmp_path, 'none', True, [0.2, 0.25])
    runs = [evaluate.read_run(p) for p in paths]
    percent = lambda values: 100 * statistics.mean(values)
    spread = lambda values: 100 * statistics.stdev(values)

    fig = evaluate.plot_train_size(runs, tmp_path / 'fig3.png')  # the frozen runs have one size: no series
    for init, container in zip(('depth', 'none'), fig.axes[0].containers):
        line = container.lines[0]
        assert list(line.get_xdata()) == [4, 16, 64]
        assert list(line.get_ydata()) == pytest.approx([percent(final[init, 'full', n]) for n in (4, 16, 64)])
        bar, = container.lines[2]  # the error bars: mean - std .. mean + std at each size
        ends = [sorted(segment[:, 1]) for segment in bar.get_segments()]
        assert ends == [pytest.approx([percent(final[init, 'full', n]) - spread(final[init, 'full', n]),
                                       percent(final[init, 'full', n]) + spread(final[init, 'full', n])])
                        for n in (4, 16, 64)]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        'seg-depth-unet-full-resnet18-64x192', 'seg-none-unet-full-resnet18-64x192']

    fig = evaluate.plot_frozen(runs, tmp_path / 'fig4.png')
    heights = sorted(bar.get_height() for bar in fig.axes[0].patches)
    assert heights == pytest.approx(sorted([percent(v) for v in final.values()]))

    fig = evaluate.plot_curves(runs, tmp_path / 'fig2.png')  # _seg_runs log miou7 / 2 at 50, miou7 at 100
    means = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].lines}
    assert means['seg-depth-unet-frozen-n16-resnet18-64x192 (n=2)'] == pytest.approx(
        [percent([0.275, 0.285]), percent([0.55, 0.57])])
    assert len(means) == len(final)

    # readable PNGs of the figures' size at 100 dpi: 6 x 4.5 inches, the bar chart 1.5 inches per configuration
    for name, width in (('fig3.png', 600), ('fig4.png', 150 * 6), ('fig2.png', 600)):
        assert matplotlib.image.imread(tmp_path / name).shape[:2] == (450, width), name


@pytest.fixture
def trained_runs(toy_root, tmp_path):
    """Two hand-made segmentation runs and one depth run, with checkpoints of (random) networks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models
    folders = []
    for name, task, seed in (('seg-a-s0', 'seg', 0), ('seg-b-s1', 'seg', 1), ('depth-c-s0', 'depth', 0)):
        torch.manual_seed(seed)
        net = models.build_seg_net() if task == 'seg' else models.build_depth_net()
        args = dict(task=task, init='none', arch='resnet18', height=64, width=192, seed=seed, train_size=4,
                    name=name, data_root=str(toy_root))
        folder = _write_run(tmp_path / name, args, [{'iter': 1, 'split': 'eval', 'miou7': 0.1}])
        torch.save(dict(model=net.state_dict(), task=task, arch='resnet18', decoder='unet', normalization='unit',
                        num_classes=19 if task == 'seg' else None, height=64, width=192, args=args), folder / 'checkpoint.pt')
        folders.append(folder)
    return folders


def _overexposed(get_item, key):
    """A dataset's __getitem__ whose images (under `key`) overshoot [0, 1], as resampled real photos can."""
    def overexposed(self, index):
        item = get_item(self, index)
        return dict(item, **{key: item[key] * 1.2 - 0.1})
    return overexposed


def test_cli_draws_qualitative_grids_and_grad_cam_from_run_checkpoints_without_warnings(trained_runs, toy_root, tmp_path,
                                                                                          caplog, monkeypatch):
    monkeypatch.setattr(data.LabelledImages, '__getitem__', _overexposed(data.LabelledImages.__getitem__, 'image'))
    monkeypatch.setattr(data.VideoSnippets, '__getitem__', _overexposed(data.VideoSnippets.__getitem__, 'frames'))
    out_dir = tmp_path / 'results'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        warnings.filterwarnings('ignore', message='The image decoding and encoding capabilities of TorchVision')
        evaluate.main([str(p) for p in trained_runs] + ['--out-dir', str(out_dir), '--images'])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # matplotlib logs
    # PNGs of each figure's size at 100 dpi: one row per held-out image (grad_cam: per run), 3 inches per column
    seg_rows = len(evaluate._common_held_out([evaluate.read_run(p) for p in trained_runs[:2]],
                                             toy_root, 4))
    sizes = {'qualitative_seg.png': (round(120 * seg_rows), 300 * 4),  # image, ground truth, two runs
             'qualitative_depth.png': (120 * 4, 300 * 3),              # image, ground truth, one run
             'grad_cam.png': (130 * 2, 300 * seg_rows)}                # two runs x the images
    for name, size in sizes.items():
        assert matplotlib.image.imread(out_dir / name).shape[:2] == size, name


def test_segmentation_grid_shows_image_truth_and_each_runs_prediction_with_a_legend_of_the_classes(trained_runs,
                                                                                                    toy_root, tmp_path):
    runs = [evaluate.read_run(p) for p in trained_runs[:2]]
    fig = evaluate.plot_qualitative(runs, toy_root, tmp_path / 'seg.png')
    items = evaluate._common_held_out(runs, toy_root, 4)
    images, labels = torch.stack([i['image'] for i in items]), torch.stack([i['label'] for i in items])
    with torch.no_grad():
        predictions = [evaluate.load_network(torch.load(run['checkpoint'], weights_only=False))(images)
                       for run in runs]
    shown = set(labels.unique().tolist()) | {i for p in predictions for i in p.argmax(1).unique().tolist()}
    legend, = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [data.CITYSCAPES_CLASSES[i] for i in sorted(shown)
                                                          if i < 19]
    colours = [tuple(round(255 * c) for c in patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    assert colours == [data.CITYSCAPES_PALETTE[i] for i in sorted(shown) if i < 19]
    # row r: the image, its labels and each run's argmax, in the Cityscapes palette (ignored pixels black)
    palette = torch.zeros(256, 3, dtype=torch.uint8)
    palette[:19] = torch.tensor(data.CITYSCAPES_PALETTE, dtype=torch.uint8)
    axes = np.array(fig.axes).reshape(len(items), 2 + len(runs))
    for r in range(len(items)):
        assert np.array_equal(axes[r, 0].images[0].get_array(), images[r].permute(1, 2, 0).numpy())
        assert np.array_equal(axes[r, 1].images[0].get_array(), palette[labels[r].long()].numpy())
        for c, prediction in enumerate(predictions):
            assert np.array_equal(axes[r, 2 + c].images[0].get_array(), palette[prediction[r].argmax(0)].numpy())


def test_depth_grid_has_a_colour_bar_in_inverse_metres(trained_runs, toy_root, tmp_path):
    fig = evaluate.plot_qualitative([evaluate.read_run(trained_runs[2])], toy_root, tmp_path / 'depth.png')
    colour_bar = fig.axes[-1]
    assert colour_bar.get_ylabel() == 'inverse depth, 1/m'
    truth, prediction = (fig.axes[i].images[0] for i in (1, 2))  # first row: image, ground truth, prediction
    assert truth.get_clim() == prediction.get_clim() and truth.get_clim()[0] == 0  # one shared scale


class _RedEvidenceNet(torch.nn.Module):
    """A constructed segmentation 'network' for Grad-CAM: its layer has a red and a green channel (1x1 conv,
    image resolution), class 1's logit is red - green and class 0's a constant 0.25. Class 1 is predicted on
    the red square only, so only the red channel carries gradient there (+1, and -1 on green): the map is
    the red square, and neither the green square (as bright in the layer, but unused by the prediction, and
    negative after the weighting: ReLU'd away) nor the background."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.layer.weight.zero_()
            self.layer.weight[0, 0] = 1.0  # red
            self.layer.weight[1, 1] = 1.0  # green

    def forward(self, images):
        a = self.layer(images)
        return torch.cat([torch.full_like(a[:, :1], 0.25), a[:, :1] - a[:, 1:]], 1)


def test_grad_cam_is_the_region_whose_activations_drive_the_predicted_class():
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0, 1:3, 1:4] = 1.0  # image 0: a red square (the evidence) and a larger green one
    images[0, 1, 5:8, 2:8] = 1.0
    images[1, 0, 4:7, 5:7] = 0.5  # image 1: a dimmer red square elsewhere, and green
    images[1, 1, 0:2, 0:8] = 1.0
    net = _RedEvidenceNet()
    cam = evaluate.grad_cam(net, images, net.layer)
    red = (images[:, 0] > 0).float()
    torch.testing.assert_close(cam, red, rtol=0, atol=1e-6)  # each image's map scaled to a maximum of 1
    assert cam.requires_grad is False


def _grad_cam_by_hand(net, images, activation_of):
    """Grad-CAM written out here, apart from evaluate.grad_cam: the activation A that `activation_of` captures
    (it registers a hook and returns the list it fills) and the gradient G of the summed logits of each
    pixel's predicted class; relu(sum_k mean(G_k) A_k) at A's resolution, over its maximum per image."""
    captured, hook = activation_of(net)
    logits = net(images)
    hook.remove()
    activation, = captured
    gradient, = torch.autograd.grad(logits.max(1).values.sum(), activation)
    expected = torch.relu((gradient.mean((2, 3))[:, :, None, None] * activation).sum(1))
    return (expected / expected.flatten(1).max(1).values[:, None, None]).detach()


def test_grad_cam_of_a_seg_net_layer_is_at_the_layers_resolution_and_scaled_per_image():
    torch.manual_seed(0)
    net = models.build_seg_net(num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cam = evaluate.grad_cam(net, images, net.encoder.layer1)

    def layer1_output(net):
        captured = []
        return captured, net.encoder.layer1.register_forward_hook(lambda m, i, output: captured.append(output))
    assert cam.shape == (2, 16, 16)  # layer1 comes after the max-pool: 1/4 of the image
    torch.testing.assert_close(cam, _grad_cam_by_hand(net, images, layer1_output), rtol=1e-5, atol=1e-6)


def test_grad_cam_reads_a_resnets_stem_before_max_pooling_by_default():
    # Sect. 4.1: "shallow layers (before pooling) for high spatial resolution": the map the max-pool reads,
    # relu(bn1(conv1(x))) at 1/2 of the image, not layer1's at 1/4
    torch.manual_seed(0)
    net = models.build_seg_net(num_classes=3).eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    name, layer = evaluate.grad_cam_layer(net, images)
    assert name == 'encoder.relu' and layer is net.encoder.relu
    cam = evaluate.grad_cam(net, images, layer)

    def max_pool_input(net):
        captured = []
        return captured, net.encoder.maxpool.register_forward_pre_hook(lambda m, inputs: captured.append(inputs[0]))
    assert cam.shape == (2, 32, 48)
    torch.testing.assert_close(cam, _grad_cam_by_hand(net, images, max_pool_input), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('arch, decoder, name, scale', [('resnet18', 'deeplab', 'encoder.relu', 2),
                                                        ('convnext_tiny', 'unet', 'encoder.features.0', 4),
                                                        ('mit_b0', 'segformer', 'encoder.patch_embed1.proj', 4)])
def test_grad_cam_default_layer_of_each_encoder_is_its_stem_the_finest_map(arch, decoder, name, scale):
    # ConvNeXt and the Mix Transformer have no pooling; their stems (the 4x4 patchify convolution, the first
    # overlapped patch merging's 7x7 convolution) give their first and finest maps, at 1/4
    torch.manual_seed(0)
    net = models.build_seg_net(arch, 3, decoder=decoder).eval()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    chosen, layer = evaluate.grad_cam_layer(net, images)
    assert chosen == name and layer is net.get_submodule(name)
    assert evaluate.map_layers(net, images)[0] in (name, 'encoder.conv1')  # nothing shallower but ResNet's conv
    assert evaluate.grad_cam(net, images, layer).shape == (1, 64 // scale, 64 // scale)


def test_grad_cam_layer_by_name_and_a_bad_name_stops_with_a_sentence_listing_valid_ones():
    torch.manual_seed(0)
    net = models.build_seg_net(num_classes=3).eval()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert evaluate.grad_cam_layer(net, images, 'encoder.layer2') == ('encoder.layer2', net.encoder.layer2)
    valid = ('encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool, encoder.layer1, encoder.layer2, '
             'encoder.layer3, encoder.layer4.')
    with pytest.raises(ValueError, match=r'^--grad-cam-layer encoder\.layer9 is not a module of this resnet18 '
                                         r'network: give one such as ') as error:
        evaluate.grad_cam_layer(net, images, 'encoder.layer9')
    assert str(error.value).endswith(valid)
    # modules that exist but give no single map: never run (fc), run twice (a block's ReLU), not a map (tokens)
    for layer, what in (('encoder.fc', 'never runs'), ('encoder.layer1.0.relu', 'runs 2 times')):
        with pytest.raises(ValueError, match=f'and {layer} {what}: choose one such as ') as error:
            evaluate.grad_cam(net, images, net.get_submodule(layer))
        assert str(error.value).endswith(valid)
    mit = models.build_seg_net('mit_b0', 3, decoder='segformer').eval()
    with pytest.raises(ValueError, match=r'encoder\.patch_embed1 outputs no \[B, C, h, w\] map: choose one such as '
                                         r'encoder\.patch_embed1\.proj, encoder\.patch_embed2\.proj'):
        evaluate.grad_cam(mit, images, mit.encoder.patch_embed1)


def test_grad_cam_figure_overlays_each_runs_map_on_the_held_out_images(trained_runs, toy_root, tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(evaluate, '_save_figure', lambda fig, path: saved.append(fig))
    calls = _spy(monkeypatch, 'grad_cam')
    runs = [evaluate.read_run(p) for p in trained_runs[:2]]
    evaluate.plot_grad_cam(runs, toy_root, tmp_path / 'grad_cam.png')
    fig, = saved
    images = torch.stack([item['image'] for item in evaluate._common_held_out(runs, toy_root, 4)])
    axes = np.array(fig.axes).reshape(len(runs), len(images))
    assert len(calls) == len(runs)
    for r, (run, call) in enumerate(zip(runs, calls)):  # row r: run r's Grad-CAM of the stem, over the images
        assert _holds_weights(call['net'], models.read_checkpoint(run['checkpoint']))
        assert call['layer'] is call['net'].encoder.relu and torch.equal(call['images'], images)
        assert call['result'].shape[-2:] == (32, 96)  # the 64x192 images at 1/2
        assert axes[r, 0].get_title(loc='left') == f'{run["name"]}: Grad-CAM of encoder.relu (32x96)'
        heats = torch.nn.functional.interpolate(call['result'][:, None], (64, 192), mode='bilinear',
                                                align_corners=False)[:, 0]
        for c in range(len(images)):
            picture, heat = axes[r, c].images
            assert np.array_equal(picture.get_array(), images[c].permute(1, 2, 0).numpy())
            assert np.array_equal(heat.get_array(), heats[c].numpy())


def test_cli_grad_cam_layer_flag_chooses_the_layer_and_a_bad_one_stops_with_a_sentence(trained_runs, tmp_path,
                                                                                        monkeypatch, capsys):
    monkeypatch.setattr(evaluate, 'plot_qualitative', lambda *args, **kwargs: None)
    calls = _spy(monkeypatch, 'grad_cam')
    evaluate.main([str(p) for p in trained_runs] + ['--out-dir', str(tmp_path / 'a'), '--images',
                                                    '--grad-cam-layer', 'encoder.layer1'])
    assert len(calls) == 2 and all(call['layer'] is call['net'].encoder.layer1 for call in calls)
    with pytest.raises(SystemExit):
        evaluate.main([str(p) for p in trained_runs] + ['--out-dir', str(tmp_path / 'b'), '--images',
                                                        '--grad-cam-layer', 'encoder.stem'])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.split(': error: ')[1].startswith('--grad-cam-layer encoder.stem is not a module of this resnet18 '
                            'network: give one such as encoder.conv1, encoder.bn1, encoder.relu, ')
    with pytest.raises(SystemExit):
        evaluate.main([str(trained_runs[0]), '--grad-cam-layer', 'encoder.layer1'])
    assert capsys.readouterr().err.strip().endswith('--grad-cam-layer chooses the layer of the Grad-CAM maps that '
                                                    '--images draws: add --images')


def _spy(monkeypatch, name):
    """Wrap evaluate.<name> to record each call's arguments (by name, defaults filled in) and its result."""
    original, calls = getattr(evaluate, name), []
    signature = inspect.signature(original)

    def spy(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments, result=original(*args, **kwargs)))
        return calls[-1]['result']
    monkeypatch.setattr(evaluate, name, spy)
    return calls


def _holds_weights(net, checkpoint):
    return all(torch.equal(value, checkpoint['model'][key]) for key, value in net.state_dict().items())


def test_evaluating_a_checkpoint_scores_its_held_out_images_by_its_own_settings(trained_runs, toy_root, capsys,
                                                                               monkeypatch):
    metrics = evaluate.main(['--checkpoint', str(trained_runs[0] / 'checkpoint.pt')])
    checkpoint = models.read_checkpoint(trained_runs[0] / 'checkpoint.pt')
    held_out = evaluate.held_out_set(checkpoint, checkpoint['args']['data_root'])
    assert len(held_out) == 12 - 4  # every labelled image outside the run's 4-image pick
    batches = torch.utils.data.DataLoader(held_out, batch_size=3)
    expected = evaluate.evaluate_segmentation(evaluate.load_network(checkpoint), batches, torch.device('cpu'))
    assert metrics['miou7'] == pytest.approx(expected['miou7']) and '"pixel_acc"' in capsys.readouterr().out
    calls = _spy(monkeypatch, 'evaluate_depth')
    depth = evaluate.main(['--checkpoint', str(trained_runs[2] / 'checkpoint.pt')])
    call, = calls
    # the run's network on the test split by the default protocol (eigen); in metres (no --supervision mono:
    # no median scaling), its sigmoid mapped to 0.1..100 m, scored up to 80 m
    assert _holds_weights(call['net'], models.read_checkpoint(trained_runs[2] / 'checkpoint.pt'))
    test_frames = kitti_test_frames(toy_root, 64, 192, 'eigen')  # the run's data root's test split
    assert call['frames'].protocol == 'eigen' and call['frames'].items == test_frames.items
    assert (call['min_depth'], call['max_depth'], call['eval_max_depth'], call['median_scaling']) == (0.1, 100.0, 80.0,
                                                                                                       False)
    assert depth == call['result'] and depth['median_scale'] == 1.0
    assert (depth['images'], depth['skipped']) == (len(test_frames), test_frames.skipped)
    with pytest.raises(SystemExit):
        evaluate.main(['--checkpoint', str(trained_runs[0] / 'missing.pt')])


def test_evaluating_a_checkpoint_with_a_multi_scale_test(trained_runs, capsys):
    checkpoint = str(trained_runs[0] / 'checkpoint.pt')
    single = evaluate.main(['--checkpoint', checkpoint])
    assert json.dumps(evaluate.main(['--checkpoint', checkpoint, '--eval-scales', '1.0'])) == json.dumps(single)
    capsys.readouterr()
    multi = evaluate.main(['--checkpoint', checkpoint, '--eval-scales', '1.0', '1.5', '--eval-flip'])
    assert ', 8 images, scales 1 1.5 and mirrored, averaged' in capsys.readouterr().out and 0 <= multi['miou'] <= 1
    with pytest.raises(SystemExit):
        evaluate.main(['--checkpoint', str(trained_runs[2] / 'checkpoint.pt'), '--eval-scales', '1.0', '1.5'])
    assert '--eval-scales and --eval-flip apply to segmentation' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(['--checkpoint', checkpoint, '--eval-scales', '0.5'])
    assert '0.5 turns the 64x192 images into 32x96' in capsys.readouterr().err


def test_an_xnet_checkpoint_is_rebuilt_as_the_variant_it_holds():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models
    xnet = dict(mix='image', pfp=False, pyramid=True)
    net = models.build_seg_net(num_classes=19, decoder='xnet', xnet=xnet).eval()
    checkpoint = dict(model=net.state_dict(), task='seg', arch='resnet18', decoder='xnet', xnet=xnet,
                      normalization='unit', num_classes=19)
    rebuilt = evaluate.load_network(checkpoint)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rebuilt(x), net(x))
    with pytest.raises(ValueError, match='does not fit'):  # the same weights read as another variant
        evaluate.load_network(dict(checkpoint, xnet=dict(xnet, pfp=True)))


@pytest.fixture
def own_images(tmp_path):
    """A folder of two seeded images of different sizes (one PNG, one JPEG) and a stray text file."""
    folder = tmp_path / 'photos'
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    torchvision.io.write_png(torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8, generator=generator),
                             str(folder / 'b_wide.png'))
    torchvision.io.write_jpeg(torch.randint(0, 256, (3, 100, 36), dtype=torch.uint8, generator=generator),
                              str(folder / 'a_tall.jpg'))
    (folder / 'notes.txt').write_text('not an image')
    return folder


def _checkpoint(tmp_path, task, normalization='unit', **args):
    """A checkpoint of a seeded random 64x64 network, in the format pretrain.py and finetune.py write."""
    import models
    torch.manual_seed(0)
    net = (models.build_seg_net(normalization=normalization) if task == 'seg'
           else models.build_depth_net(normalization=normalization))
    path = tmp_path / f'{task}.pt'
    torch.save(dict(model=net.state_dict(), task=task, arch='resnet18', decoder='unet', normalization=normalization,
                    num_classes=19 if task == 'seg' else None, height=64, width=64, args=args), path)
    return path, net.eval()


def _network_output(net, image):
    """Computed here, apart from evaluate.py: the image at 64x64 through the network, back at its own size."""
    small = torch.nn.functional.interpolate(image[None].float() / 255, (64, 64), mode='bilinear',
                                            align_corners=False, antialias=True)
    with torch.no_grad():
        out = net(small)
    out = out if isinstance(out, torch.Tensor) else out[0]
    return torch.nn.functional.interpolate(out, image.shape[-2:], mode='bilinear', align_corners=False)[0]


def test_predict_depth_on_a_folder_of_own_images(own_images, tmp_path, capsys):
    checkpoint, net = _checkpoint(tmp_path, 'depth', min_depth=0.5, max_depth=50.0)
    out_dir = tmp_path / 'predictions'
    evaluate.main(['--checkpoint', str(checkpoint), '--predict', str(own_images), '--out-dir', str(out_dir)])
    assert sorted(p.name for p in out_dir.iterdir()) == ['a_tall_depth.npy', 'a_tall_depth.png',
                                                         'b_wide_depth.npy', 'b_wide_depth.png']
    assert 'for 2 images' in capsys.readouterr().out
    for stem in ('a_tall', 'b_wide'):
        image = data.read_image(next(own_images.glob(stem + '.*')))
        depth = np.load(out_dir / f'{stem}_depth.npy')
        assert depth.dtype == np.float32 and depth.shape == tuple(image.shape[1:])
        disp = _network_output(net, image)[0]
        expected = 1 / (1 / 50.0 + (1 / 0.5 - 1 / 50.0) * disp)  # the checkpoint's own depth range
        torch.testing.assert_close(torch.from_numpy(depth), expected, rtol=1e-5, atol=1e-5)
        picture = data.read_image(out_dir / f'{stem}_depth.png')
        assert picture.shape == image.shape
        nearest = np.unravel_index(depth.argmin(), depth.shape)  # largest disparity: magma's brightest colour
        assert picture[:, nearest[0], nearest[1]].tolist() == [252, 253, 191]


def test_predict_segmentation_on_one_image(own_images, tmp_path):
    checkpoint, net = _checkpoint(tmp_path, 'seg', normalization='imagenet')
    out_dir = tmp_path / 'mine'
    evaluate.main(['--checkpoint', str(checkpoint), '--predict', str(own_images / 'b_wide.png'), '--out-dir', str(out_dir)])
    assert sorted(p.name for p in out_dir.iterdir()) == ['b_wide_seg.npy', 'b_wide_seg.png']
    ids = np.load(out_dir / 'b_wide_seg.npy')
    expected = _network_output(net, data.read_image(own_images / 'b_wide.png')).argmax(0)
    assert ids.dtype == np.uint8 and ids.shape == (48, 80)
    assert torch.equal(torch.from_numpy(ids).long(), expected)
    picture = data.read_image(out_dir / 'b_wide_seg.png')
    palette = torch.tensor(data.CITYSCAPES_PALETTE, dtype=torch.uint8)
    assert torch.equal(picture.permute(1, 2, 0), palette[expected])


def test_predict_stops_with_one_sentence_on_bad_input(own_images, tmp_path, capsys):
    depth, _ = _checkpoint(tmp_path, 'depth')
    flow = tmp_path / 'flow.pt'
    torch.save(dict(model={}, task='flow', arch='resnet18', normalization='unit', height=64, width=192), flow)
    (tmp_path / 'empty').mkdir()
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'not a png')
    cases = [(['--checkpoint', str(depth), '--predict', str(tmp_path / 'missing.png')], 'missing.png does not exist'),
             (['--checkpoint', str(depth), '--predict', str(tmp_path / 'empty')], 'holds no .png or .jpg images'),
             (['--checkpoint', str(depth), '--predict', str(own_images / 'notes.txt')], 'notes.txt is not an image'),
             (['--checkpoint', str(depth), '--predict', str(corrupt)], 'corrupt.png is not a PNG or JPEG image'),
             (['--checkpoint', str(flow), '--predict', str(own_images)], 'holds a flow network'),
             (['--checkpoint', str(tmp_path / 'none.pt'), '--predict', str(own_images)], 'none.pt does not exist'),
             (['--predict', str(own_images)], '--predict needs --checkpoint')]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            evaluate.main(argv + ['--out-dir', str(tmp_path / 'out')])
        error = capsys.readouterr().err
        assert message in error and 'Traceback' not in error, argv


def _depth_checkpoint(path, **args):
    """A depth checkpoint at 64x192, with random weights, as pretrain.py writes one."""
    import models
    net = models.build_depth_net()
    models.start_at_depth(net, 10.0, 0.1, 100.0)
    torch.save(dict(model=net.state_dict(), task='depth', arch='resnet18', decoder='unet', xnet=None,
                    normalization='unit', height=64, width=192, args=dict(args, min_depth=0.1, max_depth=100.0)), path)
    return data, models, net.eval()


@pytest.mark.parametrize('protocol', ['eigen', 'benchmark'])
def test_a_test_split_of_two_image_sizes_is_scored_image_by_image_at_native_size(two_size_root, tmp_path, protocol):
    data, models, net = _depth_checkpoint(tmp_path / 'depth.pt', supervision='stereo', eval_protocol=protocol)
    frames = kitti_test_frames(two_size_root, 64, 192, protocol)
    sizes = {tuple(frames[i]['depth'].shape[-2:]) for i in range(len(frames))}
    assert sizes == {(64, 192), (48, 160)}  # each ground truth at its own size; the inputs at the network's
    metrics = evaluate.evaluate_depth(net, frames, torch.device('cpu'), median_scaling=False)
    # the same as scoring each frame alone, at its own size, then averaging over frames
    per_frame = []
    for i in range(len(frames)):
        item = frames[i]
        with torch.no_grad():
            disp = torch.nn.functional.interpolate(net(item['frames'])[0], item['depth'].shape[-2:], mode='bilinear')
        pred = models.disp_to_depth(disp, 0.1, 100.0)[0, 0]
        per_frame.append(evaluate.depth_metrics(pred, item['depth'][0], **evaluate.PROTOCOLS[protocol]))
    assert metrics['images'] == len(frames) == len(per_frame)
    for key in ('abs_rel', 'rmse', 'a1'):
        assert metrics[key] == pytest.approx(sum(m[key] for m in per_frame) / len(per_frame), rel=1e-9)
    printed = evaluate.main(['--checkpoint', str(tmp_path / 'depth.pt'), '--data-root', str(two_size_root)])
    assert printed['rmse'] == pytest.approx(metrics['rmse'], rel=1e-9)
    if protocol == 'eigen':  # frames read by a worker process score the same
        by_worker = evaluate.evaluate_depth(net, frames, torch.device('cpu'), median_scaling=False, workers=1)
        assert by_worker['rmse'] == pytest.approx(metrics['rmse'], rel=1e-9)


def test_checkpoint_evaluation_says_and_overrides_protocol_and_scaling(two_size_root, tmp_path, capsys, monkeypatch):
    _depth_checkpoint(tmp_path / 'mono.pt', supervision='mono')  # recorded before the flags existed: mono scales
    root = ['--data-root', str(two_size_root)]
    calls = _spy(monkeypatch, 'evaluate_depth')
    default = evaluate.main(['--checkpoint', str(tmp_path / 'mono.pt')] + root)
    out = capsys.readouterr().out
    assert 'eigen (velodyne ground truth, Garg crop), median-scaled' in out and '| abs_rel |' in out
    metric = evaluate.main(['--checkpoint', str(tmp_path / 'mono.pt'), '--median-scaling', 'off',
                            '--eval-protocol', 'benchmark'] + root)
    assert 'benchmark (annotated ground truth, no crop), metric' in capsys.readouterr().out
    settings = [(c['frames'].protocol, c['median_scaling'], c['min_depth'], c['max_depth'], c['eval_max_depth'])
                for c in calls]
    assert settings == [('eigen', True, 0.1, 100.0, 80.0), ('benchmark', False, 0.1, 100.0, 80.0)]
    assert [default, metric] == [c['result'] for c in calls]
    assert metric['median_scale'] == 1.0 and metric['scale_std'] == 0.0 and default['median_scale'] != 1.0


@pytest.mark.parametrize('supervision', ['stereo', 'mono'])
def test_qualitative_depth_grid_shows_inverse_depth_of_truth_and_prediction_at_each_frames_size(two_size_root, tmp_path,
                                                                                                supervision):
    _, _, net = _depth_checkpoint(tmp_path / 'depth.pt', supervision=supervision, data_root=str(two_size_root))
    run = evaluate.read_run(tmp_path / 'depth.pt')
    count = 20 if supervision == 'stereo' else 2
    fig = evaluate.plot_qualitative([run], two_size_root, tmp_path / 'grid.png', count=count)
    assert matplotlib.image.imread(tmp_path / 'grid.png').ndim == 3
    items = evaluate._common_held_out([run], two_size_root, count)
    assert {tuple(item['depth'].shape[-2:]) for item in items} == {(64, 192), (48, 160)}  # frames of both dates
    images = torch.stack([item['frames'][0] for item in items])
    with torch.no_grad():
        disps = net(images)[0]
    axes = np.array(fig.axes[:3 * len(items)]).reshape(len(items), 3)  # the colour bar's axes come last
    shown = []
    for r, item in enumerate(items):
        gt = item['depth'][0]
        disp = torch.nn.functional.interpolate(disps[r:r + 1], gt.shape, mode='bilinear', align_corners=False)[0, 0]
        depth = 1 / (1 / 100.0 + (1 / 0.1 - 1 / 100.0) * disp)  # the checkpoint's 0.1..100 m
        if supervision == 'mono':  # median-scaled on the pixels with ground truth, as its evaluation scales
            depth = depth * np.median(gt[gt > 0].numpy()) / np.median(depth[gt > 0].numpy())
        truth = np.where(gt.numpy() > 0, 1 / np.maximum(gt.numpy(), 1e-3), 0.0)
        assert np.array_equal(axes[r, 0].images[0].get_array(), images[r].permute(1, 2, 0).numpy())
        assert np.allclose(axes[r, 1].images[0].get_array(), truth, rtol=1e-6)
        assert np.allclose(axes[r, 2].images[0].get_array(), 1 / depth.numpy(), rtol=1e-5)
        shown += [truth.ravel(), 1 / depth.numpy().ravel()]
    vmax = np.percentile(np.concatenate(shown), 99)  # one magma scale: 0 to the 99th percentile of all maps
    for ax in axes[:, 1:].ravel():
        assert ax.images[0].get_clim() == pytest.approx((0, vmax), rel=1e-5)


def test_a_file_that_is_not_a_checkpoint_stops_with_a_sentence(tmp_path, capsys):
    torch.save([1, 2, 3], tmp_path / 'list.pt')
    with pytest.raises(SystemExit) as stop:
        evaluate.main(['--checkpoint', str(tmp_path / 'list.pt')])
    assert stop.value.code == 2
    assert 'list.pt is not a checkpoint written by pretrain.py or finetune.py' in capsys.readouterr().err


# ---------------------------------------------------------------- NYU-40 classes, and what a line shows

def test_metrics_line_leaves_out_measures_that_are_nan():
    """NYU-40 has no 7 representative classes: mIoU(7) is NaN, and the printed line leaves it out."""
    import training
    metrics = dict(miou7=float('nan'), miou=0.25, pixel_acc=0.5, per_class_iou=[0.25] * 40)
    baseline = dict(miou7=float('nan'), miou=0.125, pixel_acc=0.375)
    line = training.metrics_line(metrics, baseline)
    assert line == 'mIoU 25.0 % (baseline 12.5 %), pixel acc 50.0 % (baseline 37.5 %)'
    assert 'mIoU(7)' not in line and 'nan' not in line
    line = training.metrics_line(dict(metrics, miou7=0.75), dict(baseline, miou7=0.5))  # Cityscapes' 19: shown
    assert line.startswith('mIoU(7) 75.0 % (baseline 50.0 %), mIoU 25.0 %')
    assert training.metrics_line(dict(abs_rel=float('nan'), rmse=2.0), {}) == 'rmse 2.000'


def test_class_set_follows_the_runs_data():
    nyu = evaluate.class_set({'args': {'data': 'nyu'}})
    assert nyu == (data.NYU40_CLASSES, data.NYU40_PALETTE)
    assert len(nyu[0]) == len(nyu[1]) == 40 and nyu[0][0] == 'wall' and nyu[0][39] == 'otherprop'
    assert len(set(nyu[1])) == 40  # 40 different colours
    for layout in ('kitti', 'toy', 'cityscapes'):
        assert evaluate.class_set({'args': {'data': layout}}) == (data.CITYSCAPES_CLASSES, data.CITYSCAPES_PALETTE)
    assert evaluate.class_set({}) == evaluate.class_set({'args': None}) == evaluate.class_set({'args': {'data': 'kitti'}})


def test_colourise_in_the_nyu40_palette():
    labels = torch.tensor([[39, 255], [0, 19]])
    rgb = evaluate.colourise(labels, data.NYU40_PALETTE)
    assert rgb.dtype == torch.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == list(data.NYU40_PALETTE[39]) and rgb[0, 1].tolist() == [0, 0, 0]
    assert rgb[1, 0].tolist() == list(data.NYU40_PALETTE[0]) and rgb[1, 1].tolist() == list(data.NYU40_PALETTE[19])
    assert data.NYU40_PALETTE[19] != data.CITYSCAPES_PALETTE[19 - 1]  # its own colours, not Cityscapes'


# ---------------------------------------------------------------- no silent wrong results

@pytest.mark.parametrize('channels', [3, 1])
def test_predict_reads_a_16_bit_png_as_its_8_bit_copy(tmp_path, channels):
    import toyworld
    checkpoint, _ = _checkpoint(tmp_path, 'depth', min_depth=0.1, max_depth=100.0)
    folder = tmp_path / 'photos'
    folder.mkdir()
    eight = torch.randint(0, 256, (channels, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torchvision.io.write_png(eight, str(folder / 'eight.png'))
    toyworld.write_png16((eight.int() * 257).permute(1, 2, 0).squeeze(-1).numpy().astype(np.uint16), folder / 'sixteen.png')
    evaluate.main(['--checkpoint', str(checkpoint), '--predict', str(folder), '--out-dir', str(tmp_path / 'out')])
    depth8, depth16 = (np.load(tmp_path / 'out' / f'{stem}_depth.npy') for stem in ('eight', 'sixteen'))
    np.testing.assert_allclose(depth16, depth8, rtol=1e-5)  # not /255 of 16-bit values: metres apart


def test_predict_on_images_sharing_a_name_writes_every_prediction(own_images, tmp_path, capsys):
    torchvision.io.write_jpeg(torch.zeros(3, 20, 30, dtype=torch.uint8), str(own_images / 'b_wide.jpg'))
    checkpoint, _ = _checkpoint(tmp_path, 'seg')
    out_dir = tmp_path / 'predictions'
    evaluate.main(['--checkpoint', str(checkpoint), '--predict', str(own_images), '--out-dir', str(out_dir)])
    assert sorted(p.name for p in out_dir.glob('*.npy')) == ['a_tall.jpg_seg.npy', 'b_wide.jpg_seg.npy',
                                                             'b_wide.png_seg.npy']
    assert np.load(out_dir / 'b_wide.jpg_seg.npy').shape == (20, 30) and np.load(out_dir / 'b_wide.png_seg.npy').shape == (48, 80)
    printed = capsys.readouterr().out
    assert 'b_wide.jpg and b_wide.png share the name b_wide: each prediction is named after its image\'s whole file name' in printed
    assert 'for 3 images' in printed


def test_runs_stopped_before_their_iters_are_marked_and_left_out_of_the_means(tmp_path):
    paths = _seg_runs(tmp_path, 'depth', False, [0.60, 0.70, 0.80])  # 100 iterations each
    metrics = paths[2] / 'metrics.jsonl'  # the seed-2 run killed at iteration 80 of 100
    metrics.write_text(''.join(line + '\n' for line in metrics.read_text().splitlines()[:1])
                       + json.dumps({'iter': 80, 'split': 'train', 'loss': 1.0}) + '\n')
    runs = [evaluate.read_run(p) for p in paths]
    assert [evaluate.stopped_at(run) for run in runs] == [None, None, 80]
    table = evaluate.grouped_table(runs)
    row = next(line for line in table.splitlines() if line.startswith('| seg-depth-unet-full'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells[8] == '100' and cells[9] == '2' and cells[10] == '65.00 ± 7.07'  # seeds 0 and 1 only
    assert (f'- {paths[2]} stopped before its end (its last logged iteration is 80 of 100; `--resume` continues it): '
            'left out of the means.') in table
    every = evaluate.results_table(runs)
    assert '| 80 of 100, stopped |' in every and every.count('| 100 |') == 2


def test_a_run_found_twice_counts_once(tmp_path):
    paths = _seg_runs(tmp_path, 'depth', False, [0.60, 0.70])
    copy = tmp_path / 'backup' / paths[0].name
    shutil.copytree(paths[0], copy)
    runs = [evaluate.read_run(p) for p in paths + [copy]]
    assert [len(members) for _, members in evaluate.group_runs(runs)] == [2]
    table = evaluate.grouped_table(runs)
    assert '65.00 ± 7.07' in table and f'- {copy} is the run {paths[0]} again (the same flags and seed): counted once.' in table


def test_a_segmentation_checkpoint_is_never_scored_on_its_training_images(toy_root, tmp_path, capsys):
    import finetune
    finetune.main(['--data-root', str(toy_root), '--runs', str(tmp_path), '--name', 'f', '--train-size', '4',
                   '--iters', '1', '--height', '64', '--width', '192', '--batch-size', '2', '--workers', '0'])
    checkpoint = models.read_checkpoint(tmp_path / 'f' / 'checkpoint.pt')
    trained = checkpoint['train_images']
    assert len(trained) == 4 and all(name.startswith('data_semantics/training/image_2/') for name in trained)
    root = tmp_path / 'grown'  # the labelled pool grew by four images since: the seeded pick falls elsewhere
    shutil.copytree(toy_root / 'data_semantics', root / 'data_semantics')
    for i, image in enumerate(sorted((root / 'data_semantics/training/image_2').glob('*_10.png'))[:4]):
        for folder in ('image_2', 'semantic'):
            shutil.copy(image.parent.parent / folder / image.name, image.parent.parent / folder / f'{900 + i:06d}_10.png')
    capsys.readouterr()
    held_out = evaluate.held_out_set(checkpoint, root)
    names = [Path(image).relative_to(root).as_posix() for image, _, _ in held_out.pairs]
    assert not set(names) & set(trained)
    left_out = 16 - 4 - len(names)
    assert left_out > 0 and (f'{left_out} of the {16 - 4} held-out images under {root} are among the 4 this '
                             f'checkpoint was trained on (the data changed since): they are left out') in capsys.readouterr().out
