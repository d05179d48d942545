import * as React from 'react';

import { nameParts } from '../format';

/** A model name that wraps at `/` and `:` (with <wbr>) instead of in the middle of a word. */
export function Name(props: { name: string; className?: string }): JSX.Element {
  return (
    <span className={props.className} title={props.name}>
      {nameParts(props.name).map((part, i) => (
        <React.Fragment key={i}>
          {i > 0 && <wbr />}
          {part}
        </React.Fragment>
      ))}
    </span>
  );
}
