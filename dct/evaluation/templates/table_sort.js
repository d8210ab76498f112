(function(){
// The static per-class table: a click on a header's sort key orders the rows by that key of its column's
// cells (data-d: the value, or the DCT value of a metric; data-u: the change DCT − baseline); again: reversed.
const t=document.getElementById('classstatic'); if(!t) return;
const body=t.tBodies[0], val=x=>x===undefined||x===''?null:(isNaN(Number(x))?x.toLowerCase():Number(x));
let last=null, dir=1;
t.tHead.querySelectorAll('[data-k]').forEach(s=>{
 s.style.cursor='pointer'; s.title='sort';
 s.onclick=()=>{
  const col=s.closest('th').cellIndex, k=s.dataset.k, id=col+k;
  dir=(last===id)?-dir:(col<3?1:-1); last=id;
  const rows=[...body.rows].sort((a,b)=>{const x=val(a.cells[col].dataset[k]), y=val(b.cells[col].dataset[k]);
   if(x===null&&y===null)return 0; if(x===null)return 1; if(y===null)return -1; return (x<y?-1:x>y?1:0)*dir;});
  for(const r of rows) body.appendChild(r);
 };
});
})();
