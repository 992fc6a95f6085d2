"""The Gradio page of the studio (gradio is imported inside ``build_app``)."""
from __future__ import annotations

import inspect
from pathlib import Path


from ..checks import one_line
from .state import ALL_FACES, GRID_RANGE, SLIDER_RANGE, SLIDER_STEP, Studio


def build_app(studio: Studio):
    """The studio page for ``studio`` as a ``gradio.Blocks`` (not launched)."""
    import gradio as gr

    from ..editing import SAMPLE_PHOTOS

    low, high = SLIDER_RANGE
    # no "share" button (it offers to upload to Hugging Face); the preview's download button
    # saves the JPEG preview, the Download button below the photos the full result
    image_buttons = _options(gr.Image, buttons=["download", "fullscreen"],
                             show_share_button=False)

    def notify(out: dict) -> str:
        if out.get("warning") and out.get("message"):
            gr.Warning(out["message"])
        return out.get("message", "")

    def guarded(handler, empty: tuple):
        """Any unexpected error becomes a message (the server keeps running)."""
        def run(*args):
            try:
                return handler(*args)
            except Exception as error:  # noqa: BLE001 - shown in the page instead
                message = f"Unexpected error: {one_line(error)}"
                gr.Warning(message)
                return (*empty, message)
        return run

    def slider_updates(values):
        if values is None:
            return [gr.update() for _ in studio.attrs]
        return [gr.update(value=v) for v in values]

    with gr.Blocks(title="exprfast studio", analytics_enabled=False,
                   delete_cache=(600, 3600)) as app:
        state = gr.State(None)
        gr.Markdown("## exprfast studio\nUpload or drop a photo (or pick a sample). Every face "
                    "found is outlined; each slider sets one attribute, starting at the model's "
                    "reading of the face (0 and 1 are the training values, beyond exaggerates).")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(label="Photo: upload or drop", file_types=["image"],
                                 type="filepath", elem_id="photo-upload")
                with gr.Row():
                    samples = [gr.Button(f"Sample: {Path(p).stem}", size="sm",
                                         elem_id=f"sample-{k}")
                               for k, p in enumerate(SAMPLE_PHOTOS)]
                face = gr.Radio([ALL_FACES], value=ALL_FACES, label="Edit", elem_id="face")
                # no per-slider reset button: it would go back to 0, not to the reading
                sliders = [gr.Slider(low, high, value=0.0, step=SLIDER_STEP, label=attr,
                                     elem_id=f"slider-{k}",
                                     **_options(gr.Slider, buttons=[], show_reset_button=False))
                           for k, attr in enumerate(studio.attrs)]
                reset = gr.Button("Reset to the photo's own values", size="sm")
                status = gr.Textbox(label="Status", interactive=False, lines=3, elem_id="status")
            with gr.Column(scale=3):
                with gr.Row():
                    original = gr.Image(label="Original (faces outlined)", type="pil",
                                        format="jpeg", interactive=False, elem_id="original",
                                        **image_buttons)
                    edited = gr.Image(label="Edited", type="pil", format="jpeg",
                                      interactive=False, elem_id="edited", **image_buttons)
                download = gr.DownloadButton("Download the edited photo", elem_id="download")
        with gr.Accordion("Interpolation grid (Fader Networks' figure)", open=False,
                          elem_id="grid-panel"):
            with gr.Row():
                grid_attrs = gr.CheckboxGroup(list(studio.attrs), value=list(studio.attrs),
                                              label="Rows: attributes to sweep")
                steps = gr.Slider(2, 15, value=7, step=1, label="Steps")
                grid_low = gr.Number(GRID_RANGE[0], label="From")
                grid_high = gr.Number(GRID_RANGE[1], label="To")
            make_grid = gr.Button("Make the grid", elem_id="make-grid")
            grid = gr.Image(label="Grid: the aligned face, then the sweep", type="pil",
                            format="png", interactive=False, elem_id="grid", **image_buttons)

        open_outputs = [state, original, edited, face, *sliders, download, status]

        def on_open(source):
            out = studio.open(source)
            message = notify(out)
            return (out["state"], out["original"], out["edited"],
                    gr.update(choices=out["faces"], value=out["face"]),
                    *slider_updates(out["values"]), out["download"], message)

        open_empty = (None, None, None, gr.update(), *[gr.update() for _ in studio.attrs], None)
        upload.upload(guarded(on_open, open_empty), upload, open_outputs)
        for button, path in zip(samples, SAMPLE_PHOTOS):
            button.click(guarded(lambda path=path: on_open(str(path)), open_empty), None,
                         open_outputs)

        def on_face(loaded, choice):
            out = studio.choose_face(loaded, choice)
            message = notify(out)
            return (*slider_updates(out["values"]), out["edited"], out["download"], message)

        face_outputs = [*sliders, edited, download, status]
        face_empty = (*[gr.update() for _ in studio.attrs], gr.update(), gr.update())
        face.input(guarded(on_face, face_empty), [state, face], face_outputs)
        reset.click(guarded(on_face, face_empty), [state, face], face_outputs)

        def on_slide(loaded, choice, *values):
            out = studio.render(loaded, choice, *values)
            message = notify(out)
            return (gr.update() if out["edited"] is None else out["edited"], message)

        def on_release(loaded, choice, *values):
            out = studio.download(loaded, choice, *values)
            message = notify(out)
            return (gr.update() if out["download"] is None else out["download"],
                    message or gr.update())

        for slider in sliders:
            slider.input(guarded(on_slide, (gr.update(),)), [state, face, *sliders],
                         [edited, status], trigger_mode="always_last", show_progress="hidden")
            slider.release(guarded(on_release, (gr.update(),)), [state, face, *sliders],
                           [download, status], trigger_mode="always_last",
                           show_progress="hidden")

        def on_grid(loaded, choice, attrs, n, a, b, *values):
            out = studio.grid(loaded, choice, attrs, n, a, b, *values)
            message = notify(out)
            return (gr.update() if out["grid"] is None else out["grid"], message)

        make_grid.click(guarded(on_grid, (gr.update(),)),
                        [state, face, grid_attrs, steps, grid_low, grid_high, *sliders],
                        [grid, status])
    return app


def _options(component, **options) -> dict:
    """The ``options`` that this gradio version's ``component`` takes (names differ between
    gradio 5 and 6, e.g. ``show_share_button=False`` became ``buttons=[...]``)."""
    parameters = inspect.signature(component.__init__).parameters
    return {name: value for name, value in options.items() if name in parameters}
