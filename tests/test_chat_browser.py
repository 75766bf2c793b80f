"""The chat page in a real headless Chromium: it loads from the server alone (no CDN), a message gets a reply that
streams in, calculator calls are drawn as boxes of their own (also when the model leaves markers unpaired), replies are
rendered as markdown without letting the model inject HTML, the sampling controls reach the server, edit, regenerate,
stop and new chat work, chats can be renamed and deleted, and at 400 px wide the sidebar becomes a drawer."""
import re, time
import pytest

import torch

from nanochat_nb.chat import ReplyGPT, reply_gpt, reply_parts
from nanochat_nb.gpt import GPTConfig
from nanochat_nb.chat_web import BackgroundServer, SlowEngine, create_app
from nanochat_nb.engine import Engine
from nanochat_nb.tokenizer import Tokenizer

pytest.importorskip("selenium", reason="selenium is missing: pip install -e '.[dev]'")
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

REPLY = "Let me compute: <|python_start|>6*7<|python_end|><|output_start|>42<|output_end|> so the answer is 42."
SHOWN = "Let me compute:6*742so the answer is 42."            # the text of the message: paragraphs and boxes


@pytest.fixture(scope="module")
def server():
    tok = Tokenizer.from_merges([bytes([i]) for i in range(256)])
    slow = SlowEngine(Engine(reply_gpt(tok, REPLY), tok), delay=0.02)   # ~2 s per reply: slow enough to watch it stream
    with BackgroundServer(create_app([slow], "nanochat_nb-test")) as srv:
        yield srv


def assistant_texts(d):
    "The replies' text as the page holds it (textContent: boxes inline, no layout line breaks)."
    return d.execute_script("return [...document.querySelectorAll('.message.assistant .content')].map(e => e.textContent)")


def send(d, text):
    box = d.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def wait_idle(d, timeout=30):
    WebDriverWait(d, timeout).until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".message.streaming")
                                    and d.find_element(By.ID, "stop").get_attribute("disabled") is not None)


def test_chat_page_streams_a_reply(server, browser):
    d = browser
    d.get(server.url + "/")
    WebDriverWait(d, 10).until(lambda d: "replica" in d.find_element(By.ID, "status").text)   # /health answered
    assert d.find_element(By.ID, "empty").text == "How can I help?"
    send(d, "What is 6*7?")
    # while streaming: a partial reply is on screen and Stop is enabled
    partial = []
    def seen_partial(d):
        t = assistant_texts(d)
        if t and 0 < len(t[-1]) < len(SHOWN): partial.append(t[-1])
        return len(partial) >= 2 and partial[-1] != partial[0]
    WebDriverWait(d, 20, poll_frequency=0.05).until(seen_partial)
    assert d.find_element(By.ID, "stop").is_enabled()
    wait_idle(d)
    assert assistant_texts(d) == [SHOWN]
    assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message.user .content")] == ["What is 6*7?"]
    assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message.assistant .tool-call")] == ["6*7"]
    assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message.assistant .tool-output")] == ["42"]
    # the calculator box looks different from the prose around it
    bg = d.execute_script("return getComputedStyle(document.querySelector('.tool-call')).backgroundColor")
    assert bg != d.execute_script("return getComputedStyle(document.querySelector('.message.assistant')).backgroundColor")
    # nothing was fetched from anywhere but this server
    urls = d.execute_script("return performance.getEntries().map(e => e.name).filter(n => n.startsWith('http'))")
    assert urls and all(u.startswith(server.url) for u in urls), urls
    # the sidebar lists the conversation under its first message
    assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".chat-title")] == ["What is 6*7?"]


def test_edit_regenerate_controls_stop_and_new_chat(server, browser):
    d = browser
    d.get(server.url + "/")
    d.execute_script("localStorage.clear()"); d.refresh()
    send(d, "first question"); wait_idle(d)
    send(d, "second question"); wait_idle(d)
    assert assistant_texts(d) == [SHOWN, SHOWN]
    # regenerate the last reply: still two replies
    d.find_element(By.CSS_SELECTOR, ".message.assistant:last-child .regenerate").click()
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".message.streaming")); wait_idle(d)
    assert assistant_texts(d) == [SHOWN, SHOWN]
    # edit the first message: everything after it is replaced by one new reply
    d.find_elements(By.CSS_SELECTOR, ".message.user .edit")[0].click()
    box = d.find_element(By.CSS_SELECTOR, ".edit-box"); box.clear(); box.send_keys("an edited question")
    d.find_element(By.CSS_SELECTOR, ".save-edit").click()
    WebDriverWait(d, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".message.streaming")); wait_idle(d)
    assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message.user .content")] == ["an edited question"]
    assert assistant_texts(d) == [SHOWN]
    # the controls reach the server: an out-of-range top-k comes back as the server's error
    topk = d.find_element(By.ID, "top-k"); topk.clear(); topk.send_keys("500")
    send(d, "third"); wait_idle(d)
    assert "'top_k' is 500" in d.find_element(By.CSS_SELECTOR, ".error").text
    topk.clear(); topk.send_keys("50")
    # stop mid-reply keeps what arrived, and frees the replica
    d.find_element(By.CSS_SELECTOR, ".message.user:last-child .regenerate").click()      # retry the unanswered message
    WebDriverWait(d, 10, poll_frequency=0.05).until(lambda d: len((assistant_texts(d) or [""])[-1]) > 3)
    d.find_element(By.ID, "stop").click(); wait_idle(d)
    stopped = assistant_texts(d)[-1]
    assert 0 < len(stopped) < len(SHOWN) and SHOWN.startswith(stopped)
    import httpx
    t0 = time.time()
    while httpx.get(server.url + "/stats").json()["busy_workers"] and time.time() - t0 < 10: time.sleep(0.05)
    assert httpx.get(server.url + "/stats").json()["workers"][0]["last_finish_reason"] == "cancelled"
    # a new chat starts empty; the old one is still in the sidebar and comes back on a click, after a reload too
    d.find_element(By.ID, "new-chat").click()
    assert d.find_elements(By.CSS_SELECTOR, ".message") == []
    send(d, "hello again"); wait_idle(d)
    d.refresh()
    items = d.find_elements(By.CSS_SELECTOR, ".chat-title")
    assert [e.text for e in items] == ["hello again", "first question"]
    items[1].click()
    assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message.user .content")] == ["an edited question", "third"]


MARKDOWN = ('Here is **bold**, *italic*, `inline code` and a [link](https://example.com/a_b).\n\n- one\n- two\n  1. nested\n\n'
            '```python\nprint("<b>hi</b>")\n```\n\n'
            '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> [bad](javascript:window.pwned=3)\n\n'
            'Stray<|output_end|> end, then <|output_start|>42<|python_start|>1+1<|output_end|> ok <|user_start|>')


def scripted_gpt(tok, text: str) -> ReplyGPT:
    "A ReplyGPT that spells out `text` token by token, special tokens as themselves, paired or not (reply_gpt pairs them)."
    ids = []
    for i, piece in enumerate(re.split(r"(<\|[a-z_]+\|>)", text)):
        ids += [tok.encode_special(piece)] if i % 2 else tok.encode(piece)
    cfg = GPTConfig(sequence_len=256, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                    window_pattern="L")
    sp = tok.encode_special
    with torch.device("meta"): m = ReplyGPT(cfg, ids, sp("<|assistant_start|>"), sp("<|assistant_end|>"))
    m.to_empty(device="cpu")
    return m.init_weights().eval()


def test_markdown_tool_boxes_and_no_injection(browser):
    tok = Tokenizer.from_merges([bytes([i]) for i in range(256)])
    with BackgroundServer(create_app([Engine(scripted_gpt(tok, MARKDOWN), tok)], "nanochat_nb-test")) as srv:
        d = browser
        d.get(srv.url + "/")
        send(d, "Show me markdown"); wait_idle(d)
        q = lambda css: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message.assistant .content " + css)]
        assert (q("strong"), q("em"), q("p > code")) == (["bold"], ["italic"], ["inline code"])
        link = d.find_element(By.CSS_SELECTOR, ".message.assistant .content a")
        assert (link.text, link.get_attribute("href"), link.get_attribute("target")) == ("link", "https://example.com/a_b", "_blank")
        assert "noopener" in link.get_attribute("rel")
        assert q("ul > li") == ["one", "two\nnested"] and q("ul > li > ol > li") == ["nested"]
        assert q("pre > code.language-python") == ['print("<b>hi</b>")']
        # the model's HTML stays text: no element, no script run, no javascript: link
        assert d.find_elements(By.CSS_SELECTOR, ".message.assistant img, .message.assistant script, .message.assistant b") == []
        assert d.execute_script("return window.pwned") is None
        assert [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, ".message.assistant a")] == ["https://example.com/a_b"]
        text = assistant_texts(d)[0]
        assert '<img src=x onerror="window.pwned=1">' in text and "[bad](javascript:window.pwned=3)" in text
        # unpaired markers: a result box and a calculator box, never a raw tool token; other specials as labels
        assert (q(".tool-output"), q(".tool-call")) == (["42"], ["1+1 ok user_start"])
        assert "<|" not in text and "Stray end, then" in text
        assert q(".special") == ["user_start"]
        # the page and Python read markers the same way
        cases = ["a<|python_start|>1+1<|python_end|><|output_start|>2<|output_end|>b", "<|output_start|>4<|python_start|>2*2",
                 "x<|output_end|>y<|python_end|>z", "<|python_start|><|python_end|>", "cut <|python_start|>2+", MARKDOWN]
        assert d.execute_script("return arguments[0].map(replyParts)", cases) == [reply_parts(c) for c in cases]


def test_narrow_layout_rename_and_delete(server, browser):
    d = browser
    d.set_window_size(400, 800)
    d.get(server.url + "/")
    d.execute_script("localStorage.clear()"); d.refresh()
    width = d.execute_script("return window.innerWidth")
    assert width <= 420, width
    rect = lambda css: d.execute_script(f"const r = document.querySelector('{css}').getBoundingClientRect(); return [r.left, r.right]")
    WebDriverWait(d, 5).until(lambda d: rect("#sidebar")[1] <= 0)                  # the sidebar is off screen...
    menu = d.find_element(By.ID, "menu")
    assert menu.is_displayed()
    menu.click()                                                                   # ...until the menu button opens it
    WebDriverWait(d, 5).until(lambda d: rect("#sidebar")[0] >= 0 and rect("#sidebar")[1] > 200)
    ActionChains(d).move_to_element_with_offset(d.find_element(By.ID, "backdrop"), 180, 0).click().perform()   # beside the drawer
    WebDriverWait(d, 5).until(lambda d: rect("#sidebar")[1] <= 0)
    send(d, "hello there, a plain question"); wait_idle(d)
    # the messages use the width: words are not broken letter by letter, nothing scrolls sideways
    user = d.find_element(By.CSS_SELECTOR, ".message.user .content")
    line = float(d.execute_script("return parseFloat(getComputedStyle(arguments[0]).lineHeight)", user))
    assert user.size["width"] > 250 and user.size["height"] < 1.6 * line, (user.size, line)
    assert d.find_element(By.CSS_SELECTOR, ".message.assistant .content").size["width"] > 250
    assert d.execute_script("return document.documentElement.scrollWidth") <= width
    # rename the chat (it keeps its new name across a reload), add a second one, delete the first
    menu.click()
    WebDriverWait(d, 5).until(lambda d: rect("#sidebar")[0] >= 0)
    d.find_element(By.CSS_SELECTOR, ".chat-item .rename").click()
    box = d.find_element(By.CSS_SELECTOR, ".rename-box")
    box.send_keys(Keys.CONTROL, "a"); box.send_keys("Renamed chat", Keys.ENTER)
    titles = lambda: [e.get_attribute("textContent") for e in d.find_elements(By.CSS_SELECTOR, ".chat-title")]
    assert titles() == ["Renamed chat"]
    d.find_element(By.ID, "new-chat").click()                                      # closes the drawer
    WebDriverWait(d, 5).until(lambda d: rect("#sidebar")[1] <= 0)
    send(d, "second chat"); wait_idle(d)
    d.refresh()
    assert titles() == ["second chat", "Renamed chat"]
    menu = d.find_element(By.ID, "menu"); menu.click()
    WebDriverWait(d, 5).until(lambda d: rect("#sidebar")[0] >= 0)
    delete = lambda: d.find_elements(By.CSS_SELECTOR, ".chat-item .delete")[1]
    delete().click()                                                               # a first click only asks
    assert titles() == ["second chat", "Renamed chat"] and delete().text == "delete?"
    delete().click()
    assert titles() == ["second chat"]
    d.refresh()
    assert titles() == ["second chat"] and assistant_texts(d) and [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message.user .content")] == ["second chat"]
    # deleting the open chat leaves an empty new one
    d.find_element(By.ID, "menu").click()
    WebDriverWait(d, 5).until(lambda d: rect("#sidebar")[0] >= 0)
    d.find_element(By.CSS_SELECTOR, ".chat-item .delete").click(); d.find_element(By.CSS_SELECTOR, ".chat-item .delete").click()
    assert titles() == ["New chat"] and d.find_element(By.ID, "empty").text == "How can I help?"


WIDGET_CELLS = ["from nanochat_nb.chat import ChatWidget, reply_gpt\nfrom nanochat_nb.engine import Engine\n"
                "from nanochat_nb.tokenizer import Tokenizer",
                f"tok = Tokenizer.from_merges([bytes([i]) for i in range(256)])\nREPLY = {REPLY!r}\n"
                "chat = ChatWidget(Engine(reply_gpt(tok, REPLY), tok))\nchat"]


def test_chat_widget_in_jupyterlab(tmp_path, browser):
    "The notebook chat box in a real JupyterLab: Enter in the text box and a click on Send reach the kernel, replies appear."
    import jupyter_lab as lab_tools                               # JupyterLab server and notebook-state probe (tests/)
    nbformat = pytest.importorskip("nbformat", reason="nbformat is missing: pip install -e '.[dev]'")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in WIDGET_CELLS])
    nb.metadata["kernelspec"] = dict(name=lab_tools.KERNEL, display_name="Python 3 (ipykernel)", language="python")
    lab = lab_tools.Lab(tmp_path)
    try:
        nbformat.write(nb, lab.root / "chat.ipynb")
        state = lambda d: d.execute_script(lab_tools.STATE_JS, "chat.ipynb")
        browser.set_window_size(1400, 1000)
        browser.get(f"{lab.url}/lab/tree/chat.ipynb?token={lab.token}&reset")
        WebDriverWait(browser, 60, 0.25).until(lambda d: (s := state(d)) and s["kernel"] == "idle")
        browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        def finished(d):
            s = state(d)
            assert not (s and s["errors"]), s["errors"]
            return s and s["kernel"] == "idle" and s["running"] == 0 and s["ran"] == s["code"]
        WebDriverWait(browser, 90, 0.25).until(finished)
        area = WebDriverWait(browser, 20, 0.25).until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
                                                                  if e.find_elements(By.CSS_SELECTOR, ".jupyter-widgets")])[0]
        box = WebDriverWait(browser, 20, 0.25).until(lambda d: area.find_elements(By.CSS_SELECTOR, ".widget-text input"))[0]
        transcript = lambda d: area.find_element(By.CSS_SELECTOR, ".widget-html-content").text
        box.send_keys("What is 6*7?"); box.send_keys(Keys.ENTER)                 # Enter sends
        WebDriverWait(browser, 20, 0.25).until(lambda d: "so the answer is 42." in transcript(d))
        t = transcript(browser)
        assert "You: What is 6*7?" in t and "calculator: 6*7" in t and "result: 42" in t, t
        assert box.get_attribute("value") == ""
        box.send_keys("And again?")
        [b for b in area.find_elements(By.CSS_SELECTOR, "button") if b.text == "Send"][0].click()   # so does Send
        WebDriverWait(browser, 20, 0.25).until(lambda d: transcript(d).count("so the answer is 42.") == 2)
        assert transcript(browser).count("You:") == 2
        [b for b in area.find_elements(By.CSS_SELECTOR, "button") if b.text == "New chat"][0].click()
        WebDriverWait(browser, 10, 0.25).until(lambda d: transcript(d) == "")
    finally:
        lab.stop()
