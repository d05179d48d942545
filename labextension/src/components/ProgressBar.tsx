import * as React from 'react';

import { fraction } from '../progress';

/** A thin bar with the ARIA of a progressbar; indeterminate while the total is unknown. */
export function ProgressBar(props: { done: number; total: number; label: string; complete?: boolean }): JSX.Element {
  const f = props.complete ? 1 : fraction(props.done, props.total);
  const value = f === null ? undefined : Math.floor(f * 100);
  return (
    <div
      className={`jp-ModelRunner-bar${f === null ? ' jp-mod-indeterminate' : ''}`}
      role="progressbar"
      aria-label={props.label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={value}
    >
      <div className="jp-ModelRunner-barFill" style={{ width: f === null ? undefined : `${value}%` }} />
    </div>
  );
}
