"""Render a report template for a run directory: Quarto when installed, else the built-in engine.

The built-in engine uses the same template (a Jupyter percent script Quarto also renders):
jupytext reads it into a notebook, a ``run_dir`` cell is injected after the cell tagged
``parameters`` (as Quarto and papermill do), nbclient executes it in a fresh IPython kernel
running this interpreter, nbconvert writes a self-contained HTML page (figures inlined as
base64, no code, no remote scripts) and :mod:`chanstat.report.pdf` writes the PDF through Typst.
Rendering reads files only, so it takes seconds.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

ENGINES = ("auto", "quarto", "builtin")
FORMATS = ("html", "pdf")
TEMPLATE_NAME = "chanstat_report.py"
KERNEL_NAME = "chanstat-report"


def default_template() -> Path:
    """The shipped template (package data; ``reports/chanstat_report.py`` in a source checkout)."""
    from chanstat.resources import resource_path

    return resource_path(TEMPLATE_NAME)


def resolve_engine(engine: str = "auto") -> str:
    if engine not in ENGINES:
        raise ValueError(f"unknown report engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "quarto" if shutil.which("quarto") else "builtin"
    if engine == "quarto" and not shutil.which("quarto"):
        raise FileNotFoundError("engine 'quarto' asked for but the quarto CLI is not on PATH; use engine='builtin'")
    return engine


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """``"html,pdf"`` or ``["html", "pdf"]`` -> validated, de-duplicated list."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for f in (i.strip().lower() for i in items):
        if not f:
            continue
        if f not in FORMATS:
            raise ValueError(f"unknown report format {f!r}; choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ValueError("no report format given")
    return out


def render(
    run_dir: str | os.PathLike,
    formats: str | Sequence[str] = ("html",),
    engine: str = "auto",
    template: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    name: str = "report",
    timeout: int = 600,
) -> list[Path]:
    """Render the report of a run directory.

    Parameters
    ----------
    run_dir : the run directory (only its files are read; no model is run).
    formats : ``"html"`` and/or ``"pdf"`` (a list, or a comma-separated string).
    engine : ``"quarto"`` (the quarto CLI), ``"builtin"`` (jupytext + nbclient + nbconvert +
        Typst), or ``"auto"`` (quarto when on PATH, else builtin).
    template : report source (a Jupyter percent script); default ``reports/chanstat_report.py``.
    output_dir : where to write ``{name}.html`` / ``{name}.pdf``; default ``run_dir``.
    timeout : seconds allowed per notebook cell.

    Returns
    -------
    list of Path : the files written, in the order of ``formats``.
    """
    from chanstat.rundir import MARKER, is_run_directory

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not is_run_directory(run_dir) and any(run_dir.iterdir()):  # an empty folder holds nothing to overwrite
        raise ValueError(
            f"{run_dir} is not a chanstat run directory (no {MARKER}); the report is written only into runs"
        )
    if not name or name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name:
        raise ValueError(f"report name {name!r} leaves the run directory; give a plain file name such as 'report'")
    fmts = parse_formats(formats)
    template = Path(template).resolve() if template else default_template()
    if not template.is_file():
        raise FileNotFoundError(f"report template not found: {template}")
    out_dir = Path(output_dir).resolve() if output_dir else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = resolve_engine(engine)
    if engine == "quarto":
        return _render_quarto(template, run_dir, fmts, out_dir, name)
    return _render_builtin(template, run_dir, fmts, out_dir, name, timeout)


# ============================================================================ quarto
def _render_quarto(template: Path, run_dir: Path, fmts: list[str], out_dir: Path, name: str) -> list[Path]:
    written = []
    with tempfile.TemporaryDirectory(prefix="chanstat-quarto-") as tmp:
        src = Path(tmp) / template.name
        shutil.copy2(template, src)
        for fmt in fmts:
            target = f"{name}.{fmt}"
            to = "html" if fmt == "html" else "typst"
            cmd = [
                "quarto",
                "render",
                str(src),
                "--to",
                to,
                "--output",
                target,
                "-P",
                f"run_dir:{run_dir}",
                "--execute-dir",
                str(run_dir),
            ]
            if fmt == "html":
                cmd += ["-M", "embed-resources:true"]
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=_kernel_env())
            produced = Path(tmp) / target
            if proc.returncode != 0 or not produced.is_file():
                raise RuntimeError(f"quarto render failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            dest = out_dir / target
            shutil.move(str(produced), dest)
            written.append(dest)
    return written


# ============================================================================ builtin
def _render_builtin(
    template: Path, run_dir: Path, fmts: list[str], out_dir: Path, name: str, timeout: int
) -> list[Path]:
    nb, front = build_notebook(template, {"run_dir": str(run_dir)})
    nb = execute_notebook(nb, cwd=run_dir, timeout=timeout)
    title = str(front.get("title") or "chanstat report")
    subtitle = front.get("subtitle")
    written = []
    for fmt in fmts:
        dest = out_dir / f"{name}.{fmt}"
        if fmt == "html":
            text = notebook_to_html(nb, title=title, subtitle=subtitle)
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(dest)
        else:
            from chanstat.report.pdf import compile_typst, notebook_to_typst

            with tempfile.TemporaryDirectory(prefix="chanstat-typst-") as tmp_dir:
                source = notebook_to_typst(nb, Path(tmp_dir) / "figures", title=title, subtitle=subtitle)
                compile_typst(source, Path(tmp_dir), dest)
        written.append(dest)
    return written


def _front_matter(text: str) -> dict | None:
    m = re.match(r"\s*---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None
    import yaml

    data = yaml.safe_load(m.group(1))
    return data if isinstance(data, dict) else {}


def _is_parameters_cell(cell) -> bool:
    if cell.cell_type != "code":
        return False
    if "parameters" in (cell.metadata.get("tags") or []):
        return True
    for line in cell.source.splitlines():
        m = re.match(r"\s*#\|\s*tags\s*:\s*\[(.*)\]", line)
        if m and "parameters" in [t.strip().strip("'\"") for t in m.group(1).split(",")]:
            return True
    return False


def build_notebook(template: str | os.PathLike, parameters: dict):
    """Read the template into a notebook and inject ``parameters`` after the ``parameters`` cell.

    Returns ``(notebook, front_matter)``; the YAML front matter (Quarto's) is removed from the
    notebook and returned as a dict.
    """
    import jupytext
    import nbformat

    nb = jupytext.read(str(template))
    front: dict = {}
    if nb.cells and nb.cells[0].cell_type in ("markdown", "raw"):
        fm = _front_matter(nb.cells[0].source)
        if fm is not None:
            front = fm
            nb.cells.pop(0)
    lines = ["# Injected parameters"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    injected = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    at = next((i + 1 for i, c in enumerate(nb.cells) if _is_parameters_cell(c)), 0)
    nb.cells.insert(at, injected)
    nb.metadata["title"] = str(front.get("title") or "chanstat report")
    nb.metadata.pop("kernelspec", None)
    return nb, front


def _kernel_env() -> dict:
    env = dict(os.environ)
    # the kernel must import the same chanstat as this process, installed or not
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["MPLBACKEND"] = "Agg"
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    return env


@contextmanager
def _kernel_manager():
    """A kernel manager whose only kernel spec runs this interpreter (no installed spec needed)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    with tempfile.TemporaryDirectory(prefix="chanstat-kernel-") as tmp:
        spec_dir = Path(tmp) / KERNEL_NAME
        spec_dir.mkdir()
        (spec_dir / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "chanstat report (Python)",
                    "language": "python",
                    "metadata": {"debugger": False},
                }
            )
        )
        ksm = KernelSpecManager(kernel_dirs=[tmp], ensure_native_kernel=False)
        if os.name == "nt":  # no Unix sockets: local TCP
            yield AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
        else:  # IPC sockets in the temporary folder: local only, no open TCP port
            yield AsyncKernelManager(
                kernel_name=KERNEL_NAME, kernel_spec_manager=ksm, transport="ipc", ip=str(Path(tmp) / "kernel")
            )


def execute_notebook(nb, cwd: str | os.PathLike, timeout: int = 600):
    """Run every cell in a fresh kernel (working directory ``cwd``); a cell error raises."""
    from nbclient import NotebookClient

    with _kernel_manager() as km:
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            allow_errors=False,
            record_timing=False,
            resources={"metadata": {"path": str(cwd)}},
        )
        # cleanup_kc: shut the kernel down afterwards (nbclient leaves kernels of a given km running)
        client.execute(env=_kernel_env(), cleanup_kc=True)
    for cell in nb.cells:  # warnings on stderr are not part of the report
        if cell.cell_type == "code":
            cell.outputs = [
                o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
            ]
    return nb


# ============================================================================ HTML
CSS = """
body.jp-Notebook { max-width: 1180px; margin: 0 auto; padding: 0 24px 48px 24px; }
.jp-Cell { padding: 0 !important; }
.jp-OutputArea-output img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon h1 { font-size: 2em; margin-top: 0.6em; }
.jp-RenderedHTMLCommon h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.6em; }
.chanstat-subtitle { font-size: 1.15em; color: #555; margin: -0.4em 0 1em 0; }
nav.chanstat-toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 18px; margin: 12px 0 20px 0; }
nav.chanstat-toc ul { margin: 4px 0; padding-left: 18px; }
nav.chanstat-toc li { margin: 2px 0; }
nav.chanstat-toc .toc-title { font-weight: bold; }
.chanstat-caption { font-weight: bold; margin: 14px 0 4px 0 !important; color: #24292f; }
.chanstat-table-wrap { overflow-x: auto; margin: 0 0 12px 0; }
.jp-RenderedHTMLCommon table.chanstat-table { border-collapse: collapse; font-size: 12.5px; margin: 0; table-layout: auto; }
.jp-RenderedHTMLCommon table.chanstat-table th, .jp-RenderedHTMLCommon table.chanstat-table td {
  border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; max-width: 520px; }
.jp-RenderedHTMLCommon table.chanstat-table th { background: #eef1f4; white-space: nowrap; }
.jp-RenderedHTMLCommon table.chanstat-table td.nw { white-space: nowrap; }
.jp-RenderedHTMLCommon table.chanstat-table td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.jp-RenderedHTMLCommon table.chanstat-table tbody tr:nth-child(odd) { background: #fafbfc; }
.jp-RenderedHTMLCommon table.chanstat-table tr.chanstat-emph td { font-weight: bold; background: #fff8d6; }
.chanstat-table-footer { font-size: 12px; color: #555; margin: 0 0 12px 0 !important; }
pre.chanstat-code { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 4px; padding: 8px 12px;
  font-family: var(--jp-code-font-family, monospace); font-size: 12px; line-height: 1.35; overflow-x: auto; }
details > summary { cursor: pointer; font-weight: bold; margin: 10px 0 4px 0; }
.chanstat-note { border-left: 4px solid #3a78c2; background: #e8f1fb; padding: 8px 12px; margin: 8px 0; border-radius: 3px; }
.chanstat-missing { border-left-color: #e0a030; background: #fff4e0; }
.chanstat-error { border-left-color: #c0392b; background: #fde8e8; }
"""

_TEMPLATE = (
    """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
{%- set md = output.metadata.get('image/png', {}) %}
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
{%- if md.get('width') %} width="{{ md.get('width') }}"{% endif %} alt="{{ (md.get('alt') or 'figure') | escape_html }}">
</div>
{% endblock data_png %}
{%- block extra_css -%}<style type="text/css">"""
    + CSS
    + """</style>{%- endblock extra_css -%}
"""
)


def notebook_to_html(nb, title: str = "chanstat report", subtitle: str | None = None) -> str:
    """Self-contained HTML: no code cells, images inlined, no remote scripts, a table of contents."""
    import copy

    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    head = f"# {title}" + (f'\n\n<p class="chanstat-subtitle">{html_lib.escape(str(subtitle))}</p>' if subtitle else "")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(head))
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"chanstat.html.j2": _TEMPLATE})],
        template_file="chanstat.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = _strip_remote(body)
    return _insert_toc(body)


def _strip_remote(page: str) -> str:
    """Drop any <script src=http…> or <link href=http…>: the page must display offline."""
    page = re.sub(r"<script[^>]*\ssrc=[\"']https?://[^>]*>\s*</script>", "", page, flags=re.I)
    page = re.sub(r"<link[^>]*\shref=[\"']https?://[^>]*>", "", page, flags=re.I)
    return page


_HEADING = re.compile(r"<h([23]) id=\"([^\"]+)\">(.*?)(?:<a class=\"anchor-link\"[^>]*>.*?</a>)?</h\1>", re.S)


def _insert_toc(page: str) -> str:
    items = [
        (int(level), anchor, re.sub(r"<[^>]+>", "", text).strip()) for level, anchor, text in _HEADING.findall(page)
    ]
    items = [i for i in items if i[0] == 2]
    if not items:
        return page
    lis = "".join(f'<li><a href="#{a}">{t}</a></li>' for _, a, t in items)
    toc = f'<nav class="chanstat-toc"><div class="toc-title">Contents</div><ul>{lis}</ul></nav>'
    # after the title block (the first output/markdown cell that holds the <h1>)
    m = re.search(r"</h1>(\s*<p class=\"chanstat-subtitle\">.*?</p>)?", page, re.S)
    return page[: m.end()] + toc + page[m.end() :] if m else page
