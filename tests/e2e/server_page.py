"""The chat page of dashlm serve in a real browser: headless Chromium driven by selenium types a
message, waits for the answer and checks it is the model's greedy answer with its statistics and
halting map. With DASHLM_SCREENSHOT=FILE.png (and optionally DASHLM_PAGE_MODEL=GGUF,
DASHLM_PAGE_DOC=FILE, the document, DASHLM_PAGE_QUESTION=TEXT) it also saves a screenshot of the
page."""
import os
import shutil
import sys

from common import SKIP, args, run
from server_api import Server

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    print("SKIP: selenium is not installed (scripts/setup installs it)")
    sys.exit(SKIP)


def browser():
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        print("SKIP: chromium and chromium-driver are not installed (scripts/setup installs them)")
        sys.exit(SKIP)
    o = webdriver.ChromeOptions()
    o.binary_location = chrome
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"]:
        o.add_argument(a)
    return webdriver.Chrome(options=o, service=webdriver.ChromeService(executable_path=driver))


def main():
    binary, shared, source = args()
    stories = os.path.join(shared, "models", "stories260K")
    model = os.environ.get("DASHLM_PAGE_MODEL")
    mflags = ["-m", model, "-t", "2"] if model else ["-m", os.path.join(stories, "stories260K.bin"), "--tokenizer",
                                                       os.path.join(stories, "tok512.bin"), "-t", "2"]
    message = os.environ.get("DASHLM_PAGE_QUESTION", "Once upon a time")
    doc = ""
    if os.environ.get("DASHLM_PAGE_DOC"):
        with open(os.environ["DASHLM_PAGE_DOC"]) as f:
            doc = f.read()
    want = None if model else run(binary, "run", *mflags, "-p", message, "-n", "24", "-q").stdout.decode().strip()

    srv = Server(binary, *mflags, "--halting", "topk", "--halt-layer", "2", "--keep", "0.3")
    drv = browser()
    try:
        drv.get(srv.url + "/")
        WebDriverWait(drv, 30).until(lambda d: "halting" in d.find_element(By.ID, "model").text)
        mx = drv.find_element(By.ID, "max")
        mx.clear()
        mx.send_keys("24")
        if model:
            Select(drv.find_element(By.ID, "dash")).select_by_value("query")
        if doc:
            drv.execute_script("arguments[0].value = arguments[1];", drv.find_element(By.ID, "doc"), doc)
        box = drv.find_element(By.ID, "msg")
        drv.execute_script("arguments[0].value = arguments[1];", box, message[:-1])
        box.send_keys(message[-1])  # typed: the page reads what the box holds
        drv.find_element(By.ID, "send").click()
        answer = WebDriverWait(drv, 300).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-done]"))[0]
        assert answer.get_attribute("data-done") == "1", answer.text
        stats = answer.find_element(By.CLASS_NAME, "stats").text
        assert "prefill" in stats and "halted" in stats and "cached" in stats, stats
        maps = answer.find_elements(By.CSS_SELECTOR, ".map img")
        assert maps, "no halting map"
        WebDriverWait(drv, 30).until(lambda d: d.execute_script("return arguments[0].complete", maps[0]))
        assert drv.execute_script("return arguments[0].naturalWidth", maps[0]) >= 1000, "the halting map did not load"
        text = answer.text.split("\n")[0].strip()
        if want is not None:
            assert text == want, (text, want)
        print(f"ok  the page answered {text[:60]!r} | {stats}")
        shot = os.environ.get("DASHLM_SCREENSHOT")
        if shot:
            drv.save_screenshot(shot)
            print(f"screenshot: {shot}")
    finally:
        drv.quit()
        srv.stop()
    print("PASS")


if __name__ == "__main__":
    main()
