"""``exprfast studio``: a local web page to edit a photo with one slider per attribute.

Upload or drop a photo (or pick a bundled sample): every face is found and outlined, and one
slider per model attribute starts at the model's reading of the face; the edited photo beside
the original follows the sliders. Detection, alignment and encoding happen once per photo
(:class:`exprfast.editing.PreparedPhoto`); a slider move only decodes and pastes. The result
downloads in the photo's format (PNG for formats other than JPEG); an accordion makes Fader
Networks' interpolation grid (``interpolation_grid``).

The page is a `Gradio <https://gradio.app>`_ app, an optional extra (``pip install
"exprfast[studio]"``): this module imports gradio only inside :func:`build_app` and
:func:`run`, so ``import exprfast.studio`` (and ``exprfast --help``) works without it.

:class:`Studio` is the page's logic without gradio: each handler returns a dict of the outputs
and a ``message`` (with ``warning`` True for problems: not an image, no face, a photo too
large); handlers never raise for bad input, so the server keeps running.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ..checks import one_line
from ..editing.session import RENDER_PASTES

from .page import build_app
from .state import DEFAULT_HOST, DEFAULT_PORT, INSTALL_HINT, MAX_FILE_SIZE, MAX_SIDE, Studio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``exprfast studio``."""
    parser.description = (
        "A local web page to edit a photo with one slider per attribute (needs the studio "
        f"extra: {INSTALL_HINT}). It listens on {DEFAULT_HOST} (this computer only) unless --host "
        "says otherwise.")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the bundled model)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this computer "
                             "only; 0.0.0.0 exposes the page to your network, see the README)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--paste", choices=RENDER_PASTES, default="hybrid",
                        help="how the edits go into the photo, as in exprfast edit --paste "
                             "(default hybrid; warp keeps the photo's sharpness)")
    parser.add_argument("--max-side", type=_max_side, default=MAX_SIDE,
                        help=f"photos with a longer side are downscaled to it (default "
                             f"{MAX_SIDE})")


def run(args: argparse.Namespace) -> int:
    """``exprfast studio``: serves the page until interrupted. 2 without gradio, for a bad
    model file or a port that cannot be opened."""
    try:
        importlib.import_module("gradio")
    except ImportError:
        print(f"exprfast studio: error: the studio needs Gradio: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from ..editing import load

    try:
        editor = load(args.model, device=args.device)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"exprfast studio: error: {one_line(error)}", file=sys.stderr)
        return 2
    app = build_app(Studio(editor, max_side=args.max_side, paste=args.paste))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"exprfast studio: warning: listening on {args.host}: anyone who can reach this "
              "address can use the page and upload files to it (no password, no encryption)",
              file=sys.stderr)
    try:
        app.queue(default_concurrency_limit=1).launch(
            server_name=args.host, server_port=args.port, share=False, quiet=True,
            show_error=True, ssr_mode=False, max_file_size=MAX_FILE_SIZE,
            prevent_thread_lock=True)
    except OSError as error:
        print(f"exprfast studio: error: cannot listen on {args.host}:{args.port}: "
              f"{one_line(error).split('. ')[0]}", file=sys.stderr)
        return 2
    print(f"exprfast studio: http://{_url_host(args.host)}:{args.port} (Ctrl+C to stop)",
          flush=True)
    try:
        app.block_thread()  # until Ctrl+C (gradio then closes the server)
    finally:
        app.close()
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _max_side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 64:
        raise argparse.ArgumentTypeError(f"must be at least 64, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1..65535, got {value}")
    return value
