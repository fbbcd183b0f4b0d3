"""The picture the README shows: an exported resnet18 as Netron renders it, in a real browser.

Netron (its Python package serves the file and the app on 127.0.0.1) opened in headless Chromium
through Selenium; the consent dialog accepted; the graph's drawn nodes read from the page, and
the page saved as a PNG. ``NETRON_PICTURE=docs/netron_resnet18.png python -m pytest
tests/test_netron.py`` writes the README's picture. Needs Debian's chromium and chromium-driver
(``.ci/run`` installs them) and ``pip install -e '.[dev]'`` (netron, selenium).
"""

import collections
import os
import shutil
import socket
import time

import jax
import pytest
from helpers import REPO
from PIL import Image
from test_export import random_variables

from resnet_jax.models import registry

onnx = pytest.importorskip('onnx')
netron = pytest.importorskip('netron')
webdriver = pytest.importorskip('selenium.webdriver')
from resnet_jax import onnx_graph, onnx_layout  # noqa: E402  (import onnx)

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = shutil.which('chromium'), shutil.which('chromedriver')
PICTURE_WIDTH, PICTURE_HEIGHT = 760, 1400


def resnet18_as_exported(path):
  """torchvision's resnet18 shape (random weights, 224 px, NCHW input), as `export` writes it."""
  model = registry.get_model('resnet18', num_classes=1000, cpu_convolution='xla', cpu_kernels='xla')
  variables = random_variables(model, 224)

  def forward(variables, images):
    return model.apply(variables, jax.numpy.transpose(images, (0, 2, 3, 1)), train=False)

  graph = onnx_graph.to_onnx(forward, variables, (3, 224, 224))
  onnx.save(onnx_layout.readable(onnx_graph.fold_batch_norm(graph)), path)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def drawn_nodes(driver, timeout=60.0) -> list:
  """The graph's nodes once Netron has drawn them, its consent dialog ("This app uses cookies
  ...") accepted when it shows."""
  by = pytest.importorskip('selenium.webdriver.common.by').By
  deadline = time.time() + timeout
  while time.time() < deadline:
    for button in driver.find_elements(by.ID, 'message-button'):
      if button.is_displayed() and button.text == 'Accept':
        driver.execute_script('arguments[0].click()', button)  # no pointer left on the graph
    nodes = driver.find_elements(by.CSS_SELECTOR, '#canvas g.node')
    if nodes:
      time.sleep(1)  # the layout settles
      return driver.find_elements(by.CSS_SELECTOR, '#canvas g.node')
    time.sleep(0.5)
  raise AssertionError('Netron drew no graph')


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason='needs chromium and chromium-driver')
def test_netron_draws_the_exported_resnet18_as_the_net(tmp_path):
  path = str(tmp_path / 'resnet18.onnx')
  resnet18_as_exported(path)
  address = ('127.0.0.1', free_port())
  netron.serve(path, None, address, False)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage'):
    options.add_argument(argument)
  options.add_argument(f'--window-size={PICTURE_WIDTH},{PICTURE_HEIGHT}')
  driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
  try:
    driver.get(f'http://{address[0]}:{address[1]}')
    nodes = drawn_nodes(driver)
    operators = collections.Counter(n.text.split('\n')[0] for n in nodes)
    picture = str(tmp_path / 'netron.png')
    driver.save_screenshot(picture)
    viewport = tuple(driver.execute_script('return [window.innerWidth, window.innerHeight]'))
  finally:
    driver.quit()
    netron.stop(address)
  # The 49 operators torch.onnx.export writes for resnet18, and the graph's input and output.
  assert operators['Conv'] == 20 and operators['Relu'] == 17 and operators['Add'] == 8
  assert operators['MaxPool'] == operators['GlobalAveragePool'] == operators['Gemm'] == 1
  assert operators['images'] == operators['logits'] == 1
  assert len(nodes) == 51 and 'Transpose' not in operators
  with Image.open(picture) as image:  # the page as drawn
    assert image.format == 'PNG' and image.size == viewport
  if os.environ.get('NETRON_PICTURE'):  # the README's picture, as Netron draws it today
    shutil.copy(picture, os.path.join(REPO, os.environ['NETRON_PICTURE']))
