/**
 * What the status-bar item says for a state: pure (no React, no JupyterLab), so it is tested on its own.
 */

import { familiar } from './format';
import { percent } from './progress';
import type { ModelRunnerState } from './state';

/** The item's text and tooltip for a state: a pure function of it, used by the component. */
export function statusText(state: ModelRunnerState): { text: string; title: string; busy: boolean } {
  // A standby interpreter waits for the next model: it is not a loaded model.
  const runners = state.runners.filter(r => r.mode !== 'standby');
  const loading = runners.filter(r => r.loading || r.state === 'loading');
  const details = runners.map(r => `${familiar(r.model_name)}: ${r.backend_name} on ${r.device || '…'} (${r.state})`);
  const title = details.length ? details.join('\n') : 'No model loaded';
  if (state.pulling && state.pull) {
    const pct = percent(state.pull);
    return {
      text: `Pulling ${familiar(state.pull.reference)}${pct === null ? '…' : ` ${pct}%`}`,
      title: `${state.pull.message}\n${title}`,
      busy: true
    };
  }
  if (loading.length) {
    // The engine's progress comes from the server's `loading` ticks, once a second, without polling.
    const r = loading[0];
    const elapsed = r.elapsed ? ` ${Math.round(r.elapsed)} s` : '';
    return {
      text: `Loading ${familiar(r.model_name)} (${r.backend_name})…${elapsed}`,
      title: r.log ? `${title}\n${r.backend_name}: ${r.log}` : title,
      busy: true
    };
  }
  // A pull another client runs (a kernel's `%model pull`), as the server's summaries report it.
  const remote = state.remotePulls.find(p => p.model !== state.pull?.reference);
  if (remote) {
    const pct = remote.fraction === null ? '…' : ` ${Math.floor(remote.fraction * 100)}%`;
    return {
      text: `Pulling ${familiar(remote.model)}${pct}`,
      title: `${remote.model}, pulled by another client\n${title}`,
      busy: true
    };
  }
  if (runners.length === 1) {
    const asleep = runners[0].state === 'sleeping' ? ' (sleeping)' : '';
    return { text: `${familiar(runners[0].model_name)} · ${runners[0].backend_name}${asleep}`, title, busy: false };
  }
  if (runners.length > 1) {
    const engines = Array.from(new Set(runners.map(r => r.backend_name))).join(', ');
    return { text: `${runners.length} models · ${engines}`, title, busy: false };
  }
  return { text: 'No model loaded', title, busy: false };
}

