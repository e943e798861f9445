"""The explorer in JupyterLab, the HTML report and TensorBoard (`make board`), opened in a real browser: headless
Chromium driven by Selenium.

What only a browser shows: the widget front end loads and logs no error, each image keeps its aspect
ratio, moving a slider changes the picture, a slider step or a run switch decodes the latent image once
(values the browser rounds and sends back are not decoded again), and the report renders from disk with
the network shut. Screenshots are kept in test-artifacts/browser/.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill
import pytest

from conftest import missing_part

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("built")]  # `built` (conftest.py) made once, for these and test_cli's
from selenium import webdriver  # noqa: E402  (in the lock: missing, .venv is broken, and test_setup says so)
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with every request outside localhost refused (a proxy that does not exist)."""
    if not (CHROMIUM and CHROMEDRIVER):
        missing_part("chromium and chromium-driver are not installed: `make browser` installs them (apt; CI does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                     "--proxy-server=127.0.0.1:9"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _errors(driver, seen: list) -> list[str]:
    """The browser console's errors so far (kept in ``seen``, since reading the log empties it)."""
    seen += [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return seen


def _wait(condition, what: str, timeout: float = 120, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------- the explorer

@pytest.fixture(scope="module")
def lab(tmp_path_factory, two_runs):
    """JupyterLab on a free localhost port, serving a copy of explore.ipynb pointed at the shared runs (conftest.py:
    KL weight 1 and 0, 20 latent dimensions as in the report)."""
    root = tmp_path_factory.mktemp("lab")
    cache = two_runs.cache_dir
    papermill.execute_notebook(ROOT / "notebooks" / "explore.ipynb", root / "explore.ipynb", prepare_only=True,
                               parameters={"runs_dir": str(two_runs.runs_dir)})
    settings = root / "settings"
    for plugin, values in {"docmanager-extension/plugin": {"autosave": False},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "vaehelpers-browser-test"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={root / 'workspaces'}", "--KernelManager.transport=ipc",  # as `make lab`
               ] + (["--allow-root"] if os.geteuid() == 0 else [])
    env = dict(os.environ, VAEHELPERS_CACHE=str(cache), JUPYTER_CONFIG_DIR=str(root / "config"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), IPYTHONDIR=str(root / "ipython"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "jupyterlab.log", "w") as log:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def up():
                assert server.poll() is None, f"JupyterLab exited: see {ARTIFACTS / 'jupyterlab.log'}"
                try:
                    return urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                except OSError:
                    return None
            _wait(up, "JupyterLab to start", timeout=120, every=0.5)
            yield f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}"
        finally:
            server.terminate()
            server.wait(timeout=30)


NOTEBOOK = "const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
KERNEL_IDLE = NOTEBOOK + """
return !!(nb && nb.context && nb.context.isReady && nb.context.path.endsWith('explore.ipynb')
          && nb.sessionContext.session && nb.sessionContext.session.kernel
          && nb.sessionContext.session.kernel.status === 'idle');"""
RUN_STATE = NOTEBOOK + """
const cells = nb.content.widgets.filter(c => c.model.type === 'code');
const errors = cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                   .map(o => o.ename + ': ' + o.evalue));
const pending = [...nb.node.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'));
return {errors, done: !pending && cells.every(c => c.model.executionCount !== null)
                      && nb.sessionContext.session.kernel.status === 'idle'};"""
IN_KERNEL = NOTEBOOK + """
const done = arguments[arguments.length - 1];
const future = nb.sessionContext.session.kernel.requestExecute({code: arguments[0], store_history: false});
let out = '';
future.onIOPub = msg => {
  if (msg.header.msg_type === 'stream') out += msg.content.text;
  if (msg.header.msg_type === 'error') out += 'ERROR ' + msg.content.ename + ': ' + msg.content.evalue;
};
future.done.then(() => done(out), e => done('ERROR ' + e));"""
OUTPUT_OF = NOTEBOOK + """
const cell = nb.content.widgets.find(c => c.model.sharedModel.getSource().includes(arguments[0]));
cell.outputArea.node.scrollIntoView();
return cell.outputArea.node;"""
# Counts, in the kernel, the decodings of the latent-slider image: Explorer.decode called for the sliders
# (from decode_sliders; from the notebook's show_code in the explorer before it, so the test also measures that).
COUNT_DECODES = """
import sys
from vaehelpers.explore import Explorer as _Explorer
latent_decodes = []
_decode = _Explorer.decode
def _counted(self, z):
    latent_decodes.extend([1] if sys._getframe(1).f_code.co_name in ("decode_sliders", "show_code") else [])
    return _decode(self, z)
_Explorer.decode = _counted
"""


def _in_kernel(driver, code: str) -> str:
    out = driver.execute_async_script(IN_KERNEL, code)
    assert not out.startswith("ERROR"), out
    return out


# The widget messages the browser has yet to send the kernel: ipywidgets sends one message a model at a time and
# holds back (merged) what changes meanwhile, so a slider's last values may reach the kernel after the kernel went
# idle and the images stopped changing. A negative count: the page is not what the tests expect (-1: no widget
# manager, -2: no widget model, -3: a model without ipywidgets' message counters, which it may have renamed).
UNSENT_WIDGET_MESSAGES = NOTEBOOK + """
const done = arguments[arguments.length - 1];
const managers = new Set();
for (const cell of nb.content.widgets) {
  for (const panel of (cell.outputArea ? cell.outputArea.widgets : [])) {
    for (const w of (panel.widgets || [])) if (w._manager) managers.add(w._manager.promise || w._manager);
  }
}
if (!managers.size) { done(-1); return; }
Promise.all([...managers]).then(ms => Promise.all(ms.flatMap(m => Object.values(m._models || {}))))
  .then(models => done(!models.length ? -2
                       : models.some(m => typeof m._pending_msgs !== 'number' || m._msg_buffer === undefined) ? -3
                       : models.reduce((n, m) => n + m._pending_msgs + (m._msg_buffer ? 1 : 0), 0)),
        e => done('ERROR ' + e));"""


def _latent_decodes(driver) -> int:
    return int(_in_kernel(driver, "print(sum(latent_decodes))"))


def _settle(driver, quiet: float = 1.5):
    """Wait until the browser has no widget message left to send, and the kernel has been idle and no image has
    changed for ``quiet`` seconds: the browser's answers to the kernel's last update (the values it rounds and
    sends back) have all been handled. (Without the first condition, a slider's held-back last value could reach the
    kernel after the wait and be counted by the next test: the likely cause of 23 decodes where 22 were expected.)"""
    images = "return [...document.querySelectorAll('.jp-OutputArea img')].map(i => i.src).join(' ');"
    state, since = None, time.monotonic()
    deadline = since + 60
    while time.monotonic() < deadline:
        unsent = driver.execute_async_script(UNSENT_WIDGET_MESSAGES)
        assert isinstance(unsent, int) and unsent >= 0, f"the widget messages could not be counted: {unsent}"
        now = (driver.execute_script(KERNEL_IDLE) and unsent == 0, driver.execute_script(images))
        if now != state:
            state, since = now, time.monotonic()
        elif state[0] and time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError("the kernel and the images did not settle within 60 s")


def _shot(element, name: str) -> bytes:
    png = element.screenshot_as_png
    (ARTIFACTS / name).write_bytes(png)
    return png


@pytest.fixture(scope="module")
def explorer_page(browser, lab):
    """explore.ipynb opened in JupyterLab, every cell run, with the latent image's decodings counted."""
    errors: list[str] = []
    browser.get(lab)
    _wait(lambda: browser.execute_script(KERNEL_IDLE), "the notebook to open with an idle kernel")
    _in_kernel(browser, COUNT_DECODES)
    browser.execute_script(NOTEBOOK + "window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;")

    def ran():
        state = browser.execute_script(RUN_STATE)
        assert not state["errors"], state["errors"]
        return state["done"]
    _wait(ran, "every cell of explore.ipynb to run", timeout=180)
    _settle(browser)
    browser.save_screenshot(str(ARTIFACTS / "explore-after-run-all.png"))
    return browser, errors


def test_explorer_opens_on_kl_weight_1_with_every_widget_drawn(explorer_page):
    driver, errors = explorer_page
    log = (ARTIFACTS / "jupyterlab.log").read_text()
    assert "Kernel started" in log and "without encryption" not in log  # a local kernel over IPC, as `make lab`'s
    chooser = driver.execute_script(OUTPUT_OF, "choose = w.Dropdown").find_element("css selector", "select")
    assert Select(chooser).first_selected_option.text.startswith("KL weight 1 —")
    assert len(Select(chooser).options) == 2
    images = driver.execute_script("return [...document.querySelectorAll('.jp-OutputArea img.widget-image')];")
    assert len(images) == 4  # latent, interpolation, samples, reconstruction: widgets, not the stills
    assert len(driver.execute_script(OUTPUT_OF, "decoded = w.Image").find_elements("css selector", ".noUi-handle")) == 20
    assert _latent_decodes(driver) == 1  # the first image, once: no decode for the values the browser sent back
    assert not _errors(driver, errors), errors


def test_every_image_keeps_its_aspect_ratio_and_is_not_blown_up(explorer_page):
    driver, errors = explorer_page
    for marker in ("decoded = w.Image", "path = w.Image", "samples = w.Image", "triple = w.Image"):
        output = driver.execute_script(OUTPUT_OF, marker)
        _shot(output, f"section-{marker.split()[0]}.png")
        image = output.find_element("css selector", "img.widget-image")
        size = driver.execute_script("const i = arguments[0]; return [i.naturalWidth, i.naturalHeight, "
                                     "i.getBoundingClientRect().width, i.getBoundingClientRect().height];", image)
        natural, shown = size[0] / size[1], size[2] / size[3]
        assert size[0] > 0 and abs(shown / natural - 1) < 0.02, f"{marker}: {size[0]}×{size[1]} shown {size[2]:.0f}×{size[3]:.0f}"
        assert size[2] <= size[0] + 1, f"{marker}: {size[0]} px wide, blown up to {size[2]:.0f} px"
    assert not _errors(driver, errors), errors


def test_a_latent_slider_step_decodes_once_and_moving_it_changes_the_image(explorer_page):
    driver, errors = explorer_page
    output = driver.execute_script(OUTPUT_OF, "decoded = w.Image")
    image, handle = output.find_element("css selector", "img"), output.find_element("css selector", ".noUi-handle")
    before, decodes = _shot(image, "latent-before.png"), _latent_decodes(driver)
    start = float(_in_kernel(driver, "print(sliders[0].value)"))
    handle.send_keys(Keys.ARROW_RIGHT)
    _settle(driver)
    assert _latent_decodes(driver) == decodes + 1  # one step, one decode: the value the browser echoes is not decoded again
    for _ in range(19):
        handle.send_keys(Keys.ARROW_RIGHT)
    _settle(driver)
    # ipywidgets merges the updates of keys pressed while the kernel is still busy, so a fast run of steps
    # may decode fewer times than it has steps; never more, and the image shown is the final value's
    assert decodes + 2 <= _latent_decodes(driver) <= decodes + 20
    moved, step, top = map(float, _in_kernel(driver, "print(sliders[0].value, ex.SLIDER_STEP, ex.SLIDER_RANGE)").split())
    assert abs(moved - min(start + 20 * step, top)) < step / 2, (start, moved)
    assert _in_kernel(driver, "print(ex.shown == ex.code_from_sliders([s.value for s in sliders]))").strip() == "True"
    assert _shot(image, "latent-after-20-steps.png") != before
    assert not _errors(driver, errors), errors


def test_the_interpolation_slider_changes_the_image(explorer_page):
    driver, errors = explorer_page
    output = driver.execute_script(OUTPUT_OF, "path = w.Image")
    image, handle = output.find_element("css selector", "img"), output.find_element("css selector", ".noUi-handle")
    before = _shot(image, "interpolation-before.png")
    handle.send_keys(Keys.END)  # t = 1: the decoded point is image b's reconstruction
    _settle(driver)
    assert _shot(image, "interpolation-at-b.png") != before
    assert not _errors(driver, errors), errors


def test_switching_runs_decodes_the_latent_image_once_and_shows_the_other_run(explorer_page):
    driver, errors = explorer_page
    chooser = driver.execute_script(OUTPUT_OF, "choose = w.Dropdown").find_element("css selector", "select")
    image = driver.execute_script(OUTPUT_OF, "decoded = w.Image").find_element("css selector", "img")
    shown = Select(chooser).first_selected_option.text
    other = next(option.text for option in Select(chooser).options if option.text != shown)
    before, decodes = _shot(image, "latent-before-switch.png"), _latent_decodes(driver)
    Select(chooser).select_by_visible_text(other)
    _settle(driver)
    assert _latent_decodes(driver) == decodes + 1
    assert _shot(image, "latent-after-switch.png") != before
    # the sentence above the sliders says how much of the image's code they had to clamp
    outside = int(_in_kernel(driver, "print(ex.sliders_from_code(ex.code_of(start.value))[1])"))
    output = driver.execute_script(OUTPUT_OF, "decoded = w.Image")
    note = output.find_element("css selector", ".widget-html").text
    assert f"outside ±3 in {outside} of 20 dimensions" in note if outside else note == "", (outside, note)
    _shot(output, "section-decoded-after-switch.png")
    _in_kernel(driver, "set_code([4.0] * 18 + [-5.0, 0.5])")  # as a run with codes far out would start
    _settle(driver)
    assert "outside ±3 in 19 of 20 dimensions" in output.find_element("css selector", ".widget-html").text
    values = sorted(v.text.replace("−", "-") for v in output.find_elements("css selector", ".widget-readout"))
    assert values == ["-3.00", "0.50"] + ["3.00"] * 18, values
    _shot(output, "section-decoded-clamped.png")
    assert not _errors(driver, errors), errors


# ------------------------------------------------------------------------------------------ the report

@pytest.mark.parametrize("which", ["tiny", "make-report"])
def test_report_renders_from_disk_with_the_network_shut(browser, request, which):
    """The tests' tiny report, and reports/report.html where `make report` has written it."""
    errors: list[str] = []
    html = request.getfixturevalue("built") / "report.html" if which == "tiny" else ROOT / "reports" / "report.html"
    if not html.exists():
        pytest.skip(f"{html} not made yet: `make report` writes it")
    browser.get(html.as_uri())
    _wait(lambda: browser.execute_script("return document.readyState === 'complete';"), "the report to load")
    page = browser.execute_script("""
        return {images: [...document.images].map(i => [i.complete && i.naturalWidth > 0, i.src.slice(0, 30)]),
                requests: performance.getEntriesByType('resource').map(r => r.name),
                math: [...document.querySelectorAll('math')].map(m => [getComputedStyle(m).display,
                       m.getBoundingClientRect().width, m.getBoundingClientRect().height])};""")
    assert len(page["images"]) == html.read_text().count("<img ") > 0  # 23 in the tiny report
    assert all(ok for ok, _ in page["images"]), page["images"]
    assert page["requests"] == []  # everything is inside the file: nothing to fetch, nothing to fail
    assert len(page["math"]) >= 10
    for display, width, height in page["math"]:  # laid out as MathML, not left as raw text
        assert display in ("math", "inline math", "block math") and width > 0 and height > 0, page["math"]
    browser.save_screenshot(str(ARTIFACTS / f"report-{which}-top.png"))
    browser.execute_script("[...document.querySelectorAll('math')].sort((a, b) => b.getBoundingClientRect().width"
                           " - a.getBoundingClientRect().width)[0].scrollIntoView({block: 'center'});")  # the widest
    browser.save_screenshot(str(ARTIFACTS / f"report-{which}-formula.png"))
    assert not _errors(browser, errors), errors


# ------------------------------------------------------------------------------------------ TensorBoard

DEEP = """
const out = {text: [], images: []};
function walk(root) {  // the page's text and images, inside shadow roots and frames too (TensorBoard has both)
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) walk(el.shadowRoot);
    if (el.tagName === 'IFRAME') { try { walk(el.contentDocument); } catch (e) {} }
    if (el.tagName === 'IMG' && el.complete) out.images.push([el.naturalWidth, el.naturalHeight]);
    if (!['STYLE', 'SCRIPT'].includes(el.tagName) && el.childElementCount === 0) out.text.push(el.textContent);
  }
}
walk(document);
return {text: out.text.join(' ').replace(/\\s+/g, ' '), images: out.images};
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """`python -m vaehelpers board` (what `make board` runs) on a free localhost port over two tiny measured runs,
    KL weights 0 and 1; one trained before events existed (written from its files when the board starts)."""
    from vaehelpers import fit
    from vaehelpers.measure import measure_run

    root = tmp_path_factory.mktemp("board")
    runs = {}
    for weight in (0.0, 1.0):
        run = fit(data="builtin:300", image_size=32, base_channels=8, latent_dim=4, epochs=4, batch_size=50,
                  kl_weight=weight, runs_dir=root / "runs", progress=False, cache_dir=root / "cache",
                  events=weight == 1.0)
        measure_run(run, k=4, iwae_images=16, mmd_images=16, probe_images=100, cache_dir=root / "cache")
        if weight == 0.0:  # measuring wrote its events: remove them, as for a run measured before events existed
            for events in run.dir.glob("events.out.tfevents.*"):
                events.unlink()
        runs[weight] = run.dir.name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "tensorboard.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "vaehelpers", "board", "--runs-dir", str(root / "runs"),
                                   "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, VAEHELPERS_CACHE=str(root / "cache")))
        try:
            def up():
                assert server.poll() is None, f"the board exited: see {ARTIFACTS / 'tensorboard.log'}"
                try:
                    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)) or None
                except OSError:
                    return None
            assert sorted(_wait(up, "TensorBoard to start", timeout=120, every=0.5)) == sorted(runs.values())
            yield f"http://127.0.0.1:{port}", runs
        finally:
            server.terminate()
            server.wait(timeout=30)


def _dashboard(browser, url: str, name: str, ready) -> dict:
    browser.get(url)
    page = _wait(lambda: (lambda p: p if ready(p) else None)(browser.execute_script(DEEP)), f"TensorBoard's {name}",
                 timeout=60, every=1)
    browser.save_screenshot(str(ARTIFACTS / f"tensorboard-{name}.png"))
    return page


def test_tensorboard_shows_both_runs_curves_images_and_hparams_offline(browser, board):
    url, runs = board
    errors: list[str] = []
    log = (ARTIFACTS / "tensorboard.log").read_text()
    assert f"events written from the files of {runs[0.0]} (4 epochs)" in log and "TensorBoard on " in log
    for name in runs.values():  # what the scalar cards draw: one point per epoch of each run
        points = json.load(urllib.request.urlopen(f"{url}/data/plugin/scalars/scalars?run={name}&tag=val/neg_elbo"))
        assert [step for _, step, _ in points] == [6, 12, 18, 24], (name, points)

    scalars = _dashboard(browser, f"{url}/#scalars&tagFilter=val%2Fneg_elbo", "scalars",
                         lambda p: "val/neg_elbo" in p["text"] and all(r in p["text"] for r in runs.values()))
    assert "Tags matching" in scalars["text"]  # the card of the filtered tag, with both runs in the run list
    images = _dashboard(browser, f"{url}/#images", "images",
                        lambda p: len([w for w, h in p["images"] if w > 0]) >= 4)
    assert "snapshots/reconstructions" in images["text"] and "snapshots/prior_samples" in images["text"]
    # 32-pixel images with make_grid's 2-pixel border, 8 a row: the panel above its reconstructions, 32 samples
    assert {(w, h) for w, h in images["images"] if w > 0} == {(8 * 34 + 2, 2 * 34 + 2), (8 * 34 + 2, 4 * 34 + 2)}
    hparams = _dashboard(browser, f"{url}/#hparams", "hparams",  # waits for the table's values, drawn after its header
                         lambda p: "kl_weight" in p["text"] and all(r in p["text"] for r in runs.values())
                         and " 0.0000 " in p["text"] and " 1.0000 " in p["text"])
    for column in ("kl_weight", "latent_dim", "likelihood", "precision", "seed", "val/neg_elbo", "measure/psnr_db"):
        assert column in hparams["text"], column
    assert " 0.0000 " in hparams["text"] and " 1.0000 " in hparams["text"]  # the two KL weights in the table
    assert not _errors(browser, errors), errors
