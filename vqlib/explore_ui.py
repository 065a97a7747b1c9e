"""The explorer's ipywidgets skin: widgets wired to `vqlib.explore.Explorer`'s callbacks, laid out in six panels.

No logic of its own: each callback calls one `Explorer` method and draws what it
returns (`vqlib.plots` renders the images). A `VqlibError` ends as its one
sentence in the panel's message line, never as a traceback. Every widget a
test or the browser check needs carries a CSS class ``vqlib-<name>``.
"""

from __future__ import annotations

import dataclasses
import html
import time
from typing import Any, Callable, Optional

import numpy as np

from .checkpoints import checkpoint_label
from .config import ExplorerConfig, from_dict
from .data import CLASS_NAMES, FashionMNIST
from .errors import ConfigError, VqlibError
from .explore import (
    NO_CLASSIFIER,
    NO_PRIOR,
    Explorer,
    classifier_choice,
    how_to_get_a_prior,
    open_explorer,
    prior_choice,
)
from .plots import (
    change_rgb,
    code_colors,
    code_map_rgb,
    gray_rgb,
    heatmap_rgb,
    patch_strip_rgb,
    png_bytes,
)

PANELS = ("pick", "edit", "codebook", "interpolation", "classifier", "generate")
SCALE = 6  # screen pixels per image pixel
CELL = 20  # screen pixels per code-map cell


def _widgets():
    try:
        import ipywidgets
    except ImportError:
        raise ConfigError("the explorer needs ipywidgets: install the project with pip install -e '.[dev]'") from None
    return ipywidgets


def error_html(exc: BaseException) -> str:
    return f'<span style="color:#b00020">{html.escape(str(exc))}</span>'


def bars_html(rows: list[tuple[str, float, str]], *, color: str = "#4a78c2", width: int = 180) -> str:
    """A table of horizontal bars: (label, value in [0, 1], text after the bar) per row."""
    cells = "".join(
        f'<tr><td style="padding-right:6px;white-space:nowrap">{html.escape(label)}</td>'
        f'<td><div style="background:#eee;width:{width}px;height:11px">'
        f'<div style="background:{color};width:{max(0.0, min(value, 1.0)) * width:.0f}px;height:11px"></div></div></td>'
        f'<td style="padding-left:6px;white-space:nowrap">{text}</td></tr>'
        for label, value, text in rows
    )
    return f'<table style="font-size:12px;line-height:1.2">{cells}</table>'


class ExplorerUI:
    """The widgets of one explorer; `panels` holds the six parts, `status` the loading messages."""

    def __init__(self, explorer: Optional[Explorer], status_message: str = ""):
        w = _widgets()
        self.w = w
        self.explorer = explorer
        self.status = w.HTML(status_message)
        self.status.add_class("vqlib-status")
        self.panels: dict[str, Any] = {name: w.VBox() for name in PANELS}
        for name, panel in self.panels.items():
            panel.add_class(f"vqlib-panel-{name}")
        self._syncing = False
        if explorer is not None:
            self._build()
            self._sync_pickers()
            self.refresh()

    # ------------------------------------------------------------------ building blocks

    def _image(self, name: str):
        image = self.w.Image(format="png")
        image.add_class(f"vqlib-{name}")
        return image

    def _message(self, name: str):
        message = self.w.HTML("")
        message.add_class(f"vqlib-{name}-message")
        return message

    def _figure(self, title: str, image):
        # flex-start: a column stretches its children to its widest, and an image stretched to a
        # long title is shown enlarged and blurred.
        return self.w.VBox(
            [self.w.HTML(f"<b>{html.escape(title)}</b>"), image],
            layout=self.w.Layout(align_items="flex-start", margin="0 18px 0 0"),
        )

    def _guard(self, message, fn: Callable[..., None]) -> Callable[..., None]:
        """A callback that runs `fn` and shows a VqlibError's sentence in `message`."""

        def callback(*_args) -> None:
            if self._syncing:
                return
            message.value = ""
            try:
                fn()
            except VqlibError as exc:
                message.value = error_html(exc)

        return callback

    def _button(self, label: str, name: str, message, fn: Callable[[], None]):
        button = self.w.Button(description=label, layout=self.w.Layout(width="auto"))
        button.add_class(f"vqlib-{name}")
        button.on_click(self._guard(message, fn))
        return button

    def _observe(self, widget, message, fn: Callable[[], None]) -> None:
        widget.observe(self._guard(message, fn), names="value")

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        w, ex = self.w, self.explorer
        last_cell = 11
        # 1. pick an image
        self.pick_message = self._message("pick")
        self.index = w.IntText(value=ex.index, description=f"{ex.split} index")
        self.index.add_class("vqlib-index")
        self.class_choice = w.Dropdown(options=[(n, i) for i, n in enumerate(CLASS_NAMES)], description="class")
        self.class_choice.add_class("vqlib-class")
        self.nth = w.IntSlider(min=0, max=1, description="n-th of class", continuous_update=False)
        self.nth.add_class("vqlib-nth")
        self.original_image = self._image("original")
        self.reconstruction_image = self._image("reconstruction")
        self.original_map = self._image("original-map")
        self.pick_info = w.HTML()
        self._observe(self.index, self.pick_message, self._on_index)
        self._observe(self.class_choice, self.pick_message, self._on_class)
        self._observe(self.nth, self.pick_message, self._on_class)
        self.panels["pick"].children = [
            w.HBox([self.index, self.class_choice, self.nth]),
            w.HBox(
                [
                    self._figure("image", self.original_image),
                    self._figure("reconstruction", self.reconstruction_image),
                    self._figure("its 12 x 12 code", self.original_map),
                ],
            ),
            self.pick_info,
            self.pick_message,
        ]
        # 2. edit the code
        self.edit_message = self._message("edit")
        self.rows = w.IntRangeSlider(value=(5, 6), min=0, max=last_cell, description="rows", continuous_update=False)
        self.cols = w.IntRangeSlider(value=(5, 6), min=0, max=last_cell, description="columns", continuous_update=False)
        self.rows.add_class("vqlib-rows")
        self.cols.add_class("vqlib-cols")
        # IntText, not a bounded field: a code out of range gets the explorer's own message.
        self.code = w.IntText(value=ex.blank_code, description="code")
        self.code.add_class("vqlib-code")
        self.apply = self._button("set the cells to the code", "apply", self.edit_message, self._on_apply)
        self.undo = self._button("undo", "undo", self.edit_message, lambda: self._after_edit(ex.undo()))
        self.reset = self._button("reset", "reset", self.edit_message, lambda: self._after_edit(ex.reset()))
        self.edited_map = self._image("edited-map")
        self.edited_image = self._image("edited-image")
        self.change_image = self._image("change")
        self.edit_info = w.HTML()
        self._observe(self.rows, self.edit_message, self._on_selection)
        self._observe(self.cols, self.edit_message, self._on_selection)
        self.panels["edit"].children = [
            w.HBox([self.rows, self.cols]),
            w.HBox([self.code, self.apply, self.undo, self.reset]),
            w.HBox(
                [
                    self._figure("code map (blue: selection, red: edited)", self.edited_map),
                    self._figure("decoded", self.edited_image),
                    self._figure("changed pixels (blue: reach of the selection)", self.change_image),
                ],
            ),
            self.edit_info,
            self.edit_message,
        ]
        # 3. browse the codebook
        self.codebook_message = self._message("codebook")
        self.book_code = w.IntSlider(
            value=ex.blank_code, min=0, max=ex.num_codes - 1, description="code", continuous_update=False
        )
        self.book_code.add_class("vqlib-book-code")
        self.paste = self._button("paste into the selection", "paste", self.codebook_message, self._on_paste)
        self.usage = w.HTML()
        self.patches_image = self._image("patches")
        self.preview_image = self._image("preview")
        self._observe(self.book_code, self.codebook_message, self._show_code)
        self.panels["codebook"].children = [
            w.HBox([self.book_code, self.paste]),
            w.HBox(
                [
                    w.VBox([w.HTML("<b>which classes use it</b>"), self.usage]),
                    self._figure("decoded with it pasted into the selection", self.preview_image),
                ],
            ),
            self._figure("image patches where it is used", self.patches_image),
            self.codebook_message,
        ]
        # 4. interpolate
        self.interpolation_message = self._message("interpolation")
        self.index_a = w.IntText(value=ex.index, description="image A")
        self.index_b = w.IntText(value=(ex.index + 1) % ex.num_images, description="image B")
        steps = ex.interpolation_steps
        self.t = w.FloatSlider(value=0.5 if steps % 2 else 0.0, min=0.0, max=1.0, step=1 / (steps - 1), description="t")
        self.t.add_class("vqlib-t")
        self.image_a = self._image("image-a")
        self.image_b = self._image("image-b")
        self.quantized_image = self._image("quantized")
        self.continuous_image = self._image("continuous")
        self.interpolation_info = w.HTML()
        for widget in (self.index_a, self.index_b, self.t):
            self._observe(widget, self.interpolation_message, self._show_interpolation)
        self.panels["interpolation"].children = [
            w.HBox([self.index_a, self.index_b, self.t]),
            w.HBox(
                [
                    self._figure("A", self.image_a),
                    self._figure("quantized", self.quantized_image),
                    self._figure("continuous", self.continuous_image),
                    self._figure("B", self.image_b),
                ],
            ),
            self.interpolation_info,
            self.interpolation_message,
        ]
        # 5. classifier response
        self.classifier_message = self._message("classifier")
        self.classifier_path = w.Text(
            value=checkpoint_label(ex.classifier_checkpoint) if ex.classifier_checkpoint else "",
            description="classifier",
            placeholder="path of a classifier checkpoint (best.pt)",
            layout=w.Layout(width="520px"),
        )
        self.classifier_path.add_class("vqlib-classifier-path")
        self.load_classifier = self._button("load", "load-classifier", self.classifier_message, self._on_load)
        self.probabilities = w.HTML()
        self.probabilities.add_class("vqlib-probabilities")
        self.occlusion_image = self._image("occlusion")
        self.occlusion_decoded = self._image("occlusion-decoded")
        self.classifier_info = w.HTML()
        self.panels["classifier"].children = [
            w.HBox([self.classifier_path, self.load_classifier]),
            w.HBox(
                [
                    w.VBox([w.HTML("<b>class probabilities: edited (bar) and original</b>"), self.probabilities]),
                    self._figure("occlusion map", self.occlusion_image),
                    self._figure("decoded", self.occlusion_decoded),
                ],
            ),
            self.classifier_info,
            self.classifier_message,
        ]
        # 6. generate with the prior
        self.generate_message = self._message("generate")
        self.prior_path = w.Text(
            value=checkpoint_label(ex.prior_checkpoint) if ex.prior_checkpoint else "",
            description="prior",
            placeholder="pretrained:NAME or the path of a prior checkpoint (best.pt)",
            layout=w.Layout(width="520px"),
        )
        self.prior_path.add_class("vqlib-prior-path")
        self.load_prior = self._button("load", "load-prior", self.generate_message, self._on_load_prior)
        self.generation_class = w.Dropdown(
            options=[("none", None)] + [(n, i) for i, n in enumerate(CLASS_NAMES)], description="class"
        )
        self.generation_class.add_class("vqlib-generation-class")
        # Plain number fields, not bounded ones: a value out of range gets the explorer's own sentence.
        short = {"layout": w.Layout(width="200px"), "style": {"description_width": "initial"}}
        self.temperature = w.FloatText(value=1.0, description="temperature", **short)
        self.top_k = w.IntText(value=0, description="top-k (0: all K)", **short)
        self.guidance = w.FloatText(value=0.0, description="guidance (new codes; 0: none)", **short)
        self.sweeps = w.IntText(value=1, description="sweeps", **short)
        self.seed = w.IntText(value=0, description="seed", **short)
        self.seed.add_class("vqlib-seed")
        self.sample = self._button("sample a new code", "sample", self.generate_message, self._on_sample)
        self.resample = self._button("resample the selection", "resample", self.generate_message, self._on_resample)
        self.choices = self._button(
            "what else fits the selection's first cell", "choices", self.generate_message, self._on_choices
        )
        self.generate_undo = self._button(
            "undo", "generate-undo", self.generate_message, lambda: self._after_edit(ex.undo())
        )
        self.generated_map = self._image("generated-map")
        self.generated_image = self._image("generated-image")
        self.choices_table = w.HTML()
        self.generate_info = w.HTML()
        self.generate_info.add_class("vqlib-generate-info")
        self._last_draw = ""
        self._observe(self.generation_class, self.generate_message, self._show_generate)
        self._original_bits: dict[tuple, float] = {}  # the encoder's map does not change with edits
        self.panels["generate"].children = [
            w.HBox([self.prior_path, self.load_prior]),
            w.HBox([self.generation_class, self.temperature, self.top_k]),
            w.HBox([self.rows, self.cols]),  # the edit panel's sliders: one selection, shown in both panels
            w.HBox([self.guidance, self.sweeps, self.seed]),
            w.HBox([self.sample, self.resample, self.choices, self.generate_undo]),
            w.HBox(
                [
                    self._figure("code map (blue: selection, red: edited)", self.generated_map),
                    self._figure("decoded", self.generated_image),
                    w.VBox([w.HTML("<b>the model's choices for one cell</b>"), self.choices_table]),
                ],
            ),
            self.generate_info,
            self.generate_message,
        ]

    # ------------------------------------------------------------------ callbacks

    def _on_index(self) -> None:
        self.explorer.select(self.index.value)
        self._after_select()

    def _on_class(self) -> None:
        self.explorer.select_in_class(self.class_choice.value, self.nth.value)
        self._after_select()

    def _after_select(self) -> None:
        # The codebook's statistics and patches do not depend on the image: only its preview is redrawn.
        self._sync_pickers()
        self._show_pick()
        self._after_edit()
        self._guard(self.interpolation_message, self._show_interpolation)()

    def _sync_pickers(self) -> None:
        """Index, class and n-th show the same image; setting them here must not call back."""
        ex = self.explorer
        members = ex.class_members(ex.label)
        self._syncing = True
        try:
            self.index.value = ex.index
            self.class_choice.value = ex.label
            self.nth.max = len(members) - 1
            self.nth.value = int(np.searchsorted(members, ex.index))
            self.index_a.value = ex.index
        finally:
            self._syncing = False

    def _selection(self):
        return tuple(self.rows.value), tuple(self.cols.value)

    def _on_apply(self) -> None:
        rows, cols = self._selection()
        self._after_edit(self.explorer.edit(self.code.value, rows, cols))

    def _on_paste(self) -> None:
        rows, cols = self._selection()
        self._after_edit(self.explorer.edit(self.book_code.value, rows, cols))

    def _after_edit(self, _image=None) -> None:
        # Each widget's new value goes to the browser as soon as it is set: the decoded image and
        # the probabilities first, the paste preview and the occlusion map (the slowest) after.
        self._show_edit()
        self._show_probabilities()
        self._show_preview()
        self._show_occlusion()
        self._guard(self.generate_message, self._show_generate)()

    def _on_selection(self) -> None:
        self._show_edit()
        self._show_preview()
        self._draw_generated()

    def _on_load(self) -> None:
        path = self.classifier_path.value.strip()
        if not path:
            raise ConfigError("type the path of a classifier checkpoint first")
        self.explorer.attach_classifier(path)
        self._show_classifier()

    def _on_load_prior(self) -> None:
        path = self.prior_path.value.strip()
        if not path:
            raise ConfigError("type pretrained:NAME or the path of a prior checkpoint first")
        self.explorer.attach_prior(path)
        self.choices_table.value = ""
        self._show_generate()

    def _generation_settings(self) -> dict:
        return {"temperature": self.temperature.value, "top_k": self.top_k.value or None, "seed": self.seed.value}

    def _generated(self, what: str, started: float, seed: int) -> None:
        """After a draw: the next seed waits in its field (pressing again draws anew; typing it back repeats)."""
        self._last_draw = f"{what} in {1e3 * (time.perf_counter() - started):,.0f} ms with seed {seed}"
        self.seed.value = seed + 1
        self._after_edit()

    def _on_sample(self) -> None:
        settings, started = self._generation_settings(), time.perf_counter()
        self.explorer.sample_code(self.generation_class.value, guidance=self.guidance.value, **settings)
        self._generated("sampled a new code", started, settings["seed"])

    def _on_resample(self) -> None:
        rows, cols = self._selection()
        settings, started = self._generation_settings(), time.perf_counter()
        self.explorer.resample_cells(rows, cols, self.generation_class.value, sweeps=self.sweeps.value, **settings)
        cells = (rows[1] - rows[0] + 1) * (cols[1] - cols[0] + 1)
        self._generated(f"resampled {cells} cell(s) given the other {144 - cells}", started, settings["seed"])

    def _on_choices(self) -> None:
        ex = self.explorer
        (row, _), (col, _) = ex.check_cells(*self._selection())
        choices = ex.cell_choices(row, col, self.generation_class.value)
        colors = ["#%02x%02x%02x" % tuple(rgb) for rgb in code_colors(ex.num_codes)]
        current = int(ex.codes[row, col])
        rows = [
            (
                f"code {code}",
                p,
                f'<span style="background:{colors[code]};padding:0 6px">{p:.1%}</span>'
                + (" (now)" if code == current else ""),
            )
            for code, p in choices
        ]
        self.choices_table.value = f"cell ({row}, {col}) given the other 143 (now code {current}):" + bars_html(rows)

    # ------------------------------------------------------------------ drawing

    def refresh(self) -> None:
        """Redraw every panel from the explorer's state; each panel shows its own error."""
        for fn, message in (
            (self._show_pick, self.pick_message),
            (self._show_edit, self.edit_message),
            (self._show_code, self.codebook_message),
            (self._show_interpolation, self.interpolation_message),
            (self._show_classifier, self.classifier_message),
            (self._show_generate, self.generate_message),
        ):
            self._guard(message, fn)()

    def _show_pick(self) -> None:
        ex = self.explorer
        self.original_image.value = png_bytes(gray_rgb(ex.original, SCALE))
        self.reconstruction_image.value = png_bytes(gray_rgb(ex.reconstruction, SCALE))
        self.original_map.value = png_bytes(code_map_rgb(ex.original_codes, ex.num_codes, cell=CELL))
        self.pick_info.value = (
            f"{ex.split} image {ex.index:,} of {ex.num_images:,}, class <b>{CLASS_NAMES[ex.label]}</b>; "
            f"reconstruction MSE <b>{ex.reconstruction_mse():.5f}</b>; "
            f"{len(np.unique(ex.original_codes.numpy()))} distinct codes of K={ex.num_codes}"
        )

    def _show_edit(self) -> None:
        ex = self.explorer
        rows, cols = ex.check_cells(*self._selection())
        edited = ex.edited_cells()
        self.edited_map.value = png_bytes(
            code_map_rgb(ex.codes, ex.num_codes, cell=CELL, edited=edited, selection=(rows, cols))
        )
        self.edited_image.value = png_bytes(gray_rgb(ex.image, SCALE))
        changed = ex.changed_pixels()
        self.change_image.value = png_bytes(
            change_rgb(ex.image, ex.difference(), changed, window=ex.pixel_window(rows, cols), scale=SCALE)
        )
        self.edit_info.value = (
            f"{int(edited.sum())} of 144 cells edited; {int(changed.sum())} pixels changed by more than half a grey "
            f"level; MSE to the image {ex.edited_mse():.5f} (reconstruction: {ex.reconstruction_mse():.5f}); "
            f"{ex.can_undo} step(s) to undo"
        )

    def _show_code(self) -> None:
        ex = self.explorer
        code = self.book_code.value
        usage = ex.code_usage(code)
        color = "#%02x%02x%02x" % tuple(code_colors(ex.num_codes)[code])
        rows = [
            (name, share, f"{share:.0%} ({usage['per_class'][name]:,} cells)")
            for name, share in usage["class_share"].items()
        ]
        self.usage.value = (
            f'<span style="background:{color};padding:0 6px">code {code}</span> covers '
            f"{usage['share_of_cells']:.1%} of the cells of {usage['images']:,} {ex.split} images" + bars_html(rows)
        )
        patches, _ = ex.code_patches(code)
        self.patches_image.value = png_bytes(patch_strip_rgb(patches, scale=4))
        self._show_preview()

    def _show_preview(self) -> None:
        ex = self.explorer
        rows, cols = self._selection()
        self.preview_image.value = png_bytes(gray_rgb(ex.paste_preview(self.book_code.value, rows, cols), SCALE))

    def _show_interpolation(self) -> None:
        ex = self.explorer
        a, b = self.index_a.value, self.index_b.value
        result = ex.interpolation(a, b)
        step = int(round(self.t.value * (len(result.weights) - 1)))
        self.image_a.value = png_bytes(gray_rgb(ex.images[a].numpy(), SCALE))
        self.image_b.value = png_bytes(gray_rgb(ex.images[b].numpy(), SCALE))
        self.quantized_image.value = png_bytes(gray_rgb(result.quantized[step, 0].numpy(), SCALE))
        self.continuous_image.value = png_bytes(gray_rgb(result.continuous[step, 0].numpy(), SCALE))
        self.interpolation_info.value = (
            f"t = {result.weights[step]:.2f} between {CLASS_NAMES[int(ex.labels[a])]} (A) and "
            f"{CLASS_NAMES[int(ex.labels[b])]} (B): {result.codes_changed[step]:.0%} of the 144 codes differ from A's"
        )

    def _show_classifier(self) -> None:
        self._show_probabilities()
        self._show_occlusion()

    def _show_probabilities(self) -> None:
        ex = self.explorer
        if ex.classifier is None:
            self.probabilities.value = "<i>no classifier loaded</i>"
            return
        edited = ex.probabilities()
        original = ex.probabilities(ex.original_codes)
        self.probabilities.value = bars_html(
            [
                (name, float(p), f"<b>{p:.1%}</b> <span style='color:#888'>({q:.1%})</span>")
                for name, p, q in zip(CLASS_NAMES, edited, original, strict=True)
            ]
        )

    def _show_occlusion(self) -> None:
        ex = self.explorer
        self.occlusion_decoded.value = png_bytes(gray_rgb(ex.image, SCALE))
        if ex.classifier is None:
            self.occlusion_image.value = png_bytes(heatmap_rgb(np.zeros((12, 12)), cell=CELL))
            self.classifier_info.value = (
                "Load a classifier trained on this VQ-VAE (vqlib train-cls) to see its response to the edits."
            )
            return
        occlusion, predicted = ex.occlusion_map()
        self.occlusion_image.value = png_bytes(heatmap_rgb(occlusion, cell=CELL))
        p = ex.probabilities()[predicted]
        self.classifier_info.value = (
            f"predicted <b>{CLASS_NAMES[predicted]}</b> ({p:.1%}; true class "
            f"{CLASS_NAMES[ex.label]}). Occlusion map: how much the log-odds of {CLASS_NAMES[predicted]} fall (red) "
            f"or rise (blue) when one cell alone becomes code {ex.blank_code}, the code of an empty image; the "
            f"largest change is {np.abs(occlusion).max():.2f}."
        )

    def _draw_generated(self) -> None:
        ex = self.explorer
        rows, cols = ex.check_cells(*self._selection())
        self.generated_map.value = png_bytes(
            code_map_rgb(ex.codes, ex.num_codes, cell=CELL, edited=ex.edited_cells(), selection=(rows, cols))
        )
        self.generated_image.value = png_bytes(gray_rgb(ex.image, SCALE))

    def _show_generate(self) -> None:
        ex = self.explorer
        self._draw_generated()
        self.generation_class.disabled = ex.prior is not None and not ex.prior_conditional
        if ex.prior is None:
            self.generate_info.value = html.escape(how_to_get_a_prior(ex))
            return
        label = self.generation_class.value if ex.prior_conditional else None
        given = f"class {CLASS_NAMES[label]}" if label is not None else "no class"
        key = (ex.index, label, id(ex.prior))
        if key not in self._original_bits:
            self._original_bits[key] = ex.code_bits(ex.original_codes, label=label)
        self.generate_info.value = (
            (f"{html.escape(self._last_draw)}. " if self._last_draw else "")
            + f"The map as edited: <b>{ex.code_bits(label=label):,.1f} bits</b> under the prior ({given}); "
            f"the encoder's map of the image: {self._original_bits[key]:,.1f} bits. "
            f"Prior {html.escape(checkpoint_label(ex.prior_checkpoint))}"
            + ("" if ex.prior_conditional else " (trained without classes)")
            + "."
        )


def explorer_ui(parameters: dict, data: Optional[FashionMNIST] = None) -> ExplorerUI:
    """The explorer's widgets for notebook 05's parameters; a problem shows as one sentence, never a traceback.

    An unusable VQ-VAE (or parameter) leaves the panels empty and says why in
    `status`; a refused classifier or an index out of range leaves the rest usable.
    """
    try:
        config = from_dict(ExplorerConfig, parameters)
        explorer = open_explorer(
            dataclasses.replace(config, classifier_checkpoint=NO_CLASSIFIER, prior_checkpoint=NO_PRIOR, image_index=0),
            data,
        )
    except VqlibError as exc:
        return ExplorerUI(None, error_html(exc))
    messages = [
        f"VQ-VAE {checkpoint_label(explorer.vqvae_checkpoint)} (K={explorer.num_codes}, D={explorer.model.config.embedding_dim}) "
        f"on the {explorer.split} split"
    ]
    problems: dict[str, str] = {}
    try:
        explorer.select(config.image_index)
    except VqlibError as exc:
        problems["pick"] = error_html(exc)
    classifier = classifier_choice(config, explorer.vqvae_checkpoint)
    if classifier:
        try:
            explorer.attach_classifier(classifier)
            messages.append(f"classifier {checkpoint_label(classifier)}")
        except VqlibError as exc:
            problems["classifier"] = error_html(exc)
    prior = prior_choice(config, explorer.model)
    if prior:
        try:
            explorer.attach_prior(prior)
            messages.append(f"prior {checkpoint_label(prior)}")
        except VqlibError as exc:
            problems["generate"] = error_html(exc)
    ui = ExplorerUI(explorer, "; ".join(html.escape(m) for m in messages))
    if classifier and explorer.classifier is None:
        ui.classifier_path.value = classifier
    if prior and explorer.prior is None:
        ui.prior_path.value = prior
    for panel, message in problems.items():
        getattr(ui, f"{panel}_message").value = message
    return ui
