// Light / dark / follow-the-system theme toggle, remembered in localStorage.

const KEY = 'rentahal-theme';
const MODES = ['auto', 'light', 'dark'];

function apply(mode, button) {
  if (mode === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = mode;
  if (button) {
    button.textContent = `Theme: ${mode}`;
    button.setAttribute('aria-label', `Colour theme: ${mode}. Click to change.`);
    button.dataset.mode = mode;
  }
}

export function initTheme(button) {
  let mode = 'auto';
  try { mode = MODES.includes(localStorage.getItem(KEY)) ? localStorage.getItem(KEY) : 'auto'; } catch { /* storage blocked */ }
  apply(mode, button);
  button.addEventListener('click', () => {
    mode = MODES[(MODES.indexOf(mode) + 1) % MODES.length];
    try { localStorage.setItem(KEY, mode); } catch { /* storage blocked */ }
    apply(mode, button);
  });
}
