import { useEffect, useReducer, useState } from 'react';

import type { ModelRunnerState } from '../state';

/** Re-render whenever the shared state changes. */
export function useRunnerState(state: ModelRunnerState): void {
  const [, bump] = useReducer((n: number) => n + 1, 0);
  useEffect(() => {
    const listener = (): void => bump();
    state.changed.connect(listener);
    return () => {
      state.changed.disconnect(listener);
    };
  }, [state]);
}

/** The current time in Unix seconds, ticking every second (for countdowns). */
export function useNow(): number {
  const [now, setNow] = useState(() => Date.now() / 1000);
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now() / 1000), 1000);
    return () => window.clearInterval(timer);
  }, []);
  return now;
}
