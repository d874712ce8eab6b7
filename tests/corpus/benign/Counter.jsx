import { useEffect, useState } from "react";

/** A counter that can be reset; props.onChange is called with the new value. */
export default function Counter({ initial = 0, onChange }) {
  const [count, setCount] = useState(initial);

  useEffect(() => {
    if (onChange) onChange(count);
  }, [count, onChange]);

  // Ignore clicks while a previous update is still being saved.
  const [saving, setSaving] = useState(false);

  return (
    <div className="counter">
      <button disabled={saving} onClick={() => setCount((c) => c + 1)}>
        Clicked {count} times
      </button>
      <button onClick={() => setCount(initial)}>Reset</button>
    </div>
  );
}
