// Where each tile goes, for a stage of width x height. Pure geometry: no DOM, no LiveKit.
// A tile is { key, screen }; `main` is the key shown large in the speaker layouts.
// Returns a Map key -> { x, y, w, h } (px); tiles missing from the map are hidden.

export const LAYOUTS = ['grid', 'speaker', 'single-speaker'];

export function arrange(layout, tiles, main, width, height) {
  const boxes = new Map();
  if (tiles.length === 0) return boxes;
  if (layout === 'grid') return grid(tiles, width, height);
  const mainTile = tiles.find((t) => t.key === main) || tiles[0];
  if (layout === 'single-speaker' || tiles.length === 1) {
    boxes.set(mainTile.key, { x: 0, y: 0, w: width, h: height });
    return boxes;
  }
  // speaker: the main tile on the left 4/5, the others in a 16:9 column on the right.
  const sideW = Math.round(width / 5);
  const others = tiles.filter((t) => t !== mainTile);
  const sideH = Math.min(Math.round((sideW * 9) / 16), Math.floor(height / others.length));
  const top = Math.round((height - sideH * others.length) / 2);
  boxes.set(mainTile.key, { x: 0, y: 0, w: width - sideW, h: height });
  others.forEach((t, i) => boxes.set(t.key, { x: width - sideW, y: top + i * sideH, w: sideW, h: sideH }));
  return boxes;
}

// Rows of equal cells, the last row centred.
function grid(tiles, width, height) {
  const boxes = new Map();
  const cols = Math.ceil(Math.sqrt(tiles.length));
  const rows = Math.ceil(tiles.length / cols);
  const w = Math.floor(width / cols);
  const h = Math.floor(height / rows);
  tiles.forEach((t, i) => {
    const row = Math.floor(i / cols);
    const inRow = row === rows - 1 ? tiles.length - row * cols : cols;
    const offset = Math.round(((cols - inRow) * w) / 2);
    boxes.set(t.key, { x: offset + (i % cols) * w, y: row * h, w, h });
  });
  return boxes;
}
